"""The README gallery, made by the shipped model with the `unclip` commands it lists.

    .venv/bin/python scripts/gallery.py [--out docs/gallery] [--model DIR]

Writes prompts.png (16 prompts: styles, skin tones, paraphrases never seen in captions, held-out
concepts), variations.png, interpolation.png, text_diff.png, and commands.md with the exact
command behind each picture.
"""

import argparse
import shlex
import sys
from pathlib import Path

PROMPTS = [
    "a grinning cat, 3D style", "red heart, flat style", "pizza slice, outline", "a thumbs up, dark skin tone",
    "a waving hand, medium-light skin tone, 3D", "rocket, Noto style", "a very happy yellow face", "a sad face with tears",
    "an orange fruit, flat icon", "a blue car", "a dog face, Twemoji style", "the moon at night",
    "a grumpy pink face", "a green tree, 3D", "a ghost, high contrast", "a birthday cake with candles",
]


def run(cmd: list[str], log: list[str]) -> None:
    from unclip.cli import main

    log.append("unclip " + " ".join(shlex.quote(c) for c in cmd))
    if main(cmd) != 0:
        raise SystemExit(f"failed: {log[-1]}")


def main() -> int:
    from PIL import Image, ImageDraw

    from unclip.models import default_model_dir

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/gallery"))
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out, log = a.out, []
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", str(a.model), "--seed", str(a.seed)]
    tiles = []
    for i, prompt in enumerate(PROMPTS):
        f = out / f"prompt-{i:02d}.png"
        run(["generate", prompt, "--num-images", "1", "--out", str(f), *common], log)
        tiles.append((prompt, Image.open(f).convert("RGB")))
    side = tiles[0][1].width
    sheet = Image.new("RGB", (4 * side, 4 * (side + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, im) in enumerate(tiles):
        x, y = (i % 4) * side, (i // 4) * (side + 28)
        sheet.paste(im, (x, y))
        draw.text((x + 4, y + side + 6), prompt[:40], fill="black")
    sheet.save(out / "prompts.png")
    for f in out.glob("prompt-*.png"):
        f.unlink()
    src = out / "source.png"
    run(["generate", "a grinning cat, 3D style", "--num-images", "1", "--out", str(src), *common], log)
    run(["vary", str(src), "--num-images", "6", "--out", str(out / "variations.png"), *common], log)
    run(["interpolate", "a grinning cat, 3D style", "a red heart, flat style", "--frames", "6",
         "--out", str(out / "interpolation.png"), *common], log)
    run(["edit", str(src), "--from", "a grinning cat", "--to", "a crying cat", "--thetas", "0,0.1,0.2,0.3,0.4,0.5",
         "--out", str(out / "text_diff.png"), *common], log)
    (out / "commands.md").write_text("# Commands behind the gallery\n\n" + "\n".join(f"    {c}" for c in log) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
