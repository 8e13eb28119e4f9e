"""The README's fine-tuning figure: real held-out images, then the base, fully fine-tuned and LoRA models.

    python scripts/finetune_figure.py ~/.cache/unclip/examples docs/finetune_fxemoji.png

Reads the two `unclip finetune` outputs of scripts/finetune_example.sh (ft-full/, ft-lora/): each
before_after.png holds the base model's row and the fine-tuned row for the same held-out captions
and seeds; the real images are those captions' images in the imported data.
"""

import argparse
import json
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("examples", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tile", type=int, default=128)
    args = ap.parse_args()
    from unclip.embed import image_pack

    sheets, prompts = {}, {}
    for d in ("ft-full", "ft-lora"):
        with Image.open(args.examples / d / "before_after.png") as im:
            prompts[d] = json.loads(im.text["parameters"])["prompts"]
            sheets[d] = im.convert("RGB")
    if prompts["ft-full"] != prompts["ft-lora"]:
        raise SystemExit("the two fine-tunes' grids are of different captions")
    full, lora, prompts = sheets["ft-full"], sheets["ft-lora"], prompts["ft-full"]
    images, idx = image_pack(args.examples / "ft-full" / "data", "heldout_images", resolution=args.tile)
    side, n, t = full.height // 2, len(prompts), args.tile
    if [idx["captions"][i] for i in idx["caption_offsets"][:n]] != prompts:
        raise SystemExit("the grid's captions are not the first held-out images' own")
    rows = [[Image.fromarray(images[i]) for i in range(n)]]  # the captions are the first held-out images' own
    for sheet, row in ((full, 0), (full, 1), (lora, 1)):
        rows.append([sheet.crop((i * side, row * side, (i + 1) * side, (row + 1) * side)) for i in range(n)])
    fig = Image.new("RGB", (n * t, len(rows) * t), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            fig.paste(im.resize((t, t), Image.Resampling.LANCZOS), (c * t, r * t))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.out, optimize=True)
    print(f"wrote {args.out}: rows real / base / full fine-tune / LoRA, columns: {'; '.join(prompts)}")


if __name__ == "__main__":
    main()
