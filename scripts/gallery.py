"""The README gallery, made by the shipped model with the `unclip` commands it lists.

    .venv/bin/python scripts/gallery.py [--out docs/gallery] [--model DIR] [--data DIR]

Writes prompts.jpg (16 prompts: styles, skin tones, paraphrases never seen in captions, held-out
concepts), variations.jpg, interpolation.jpg and text_diff.jpg, and commands.md with the exact
command behind each picture. Variations, the interpolation and the edit start from real images of
the held-out split (Microsoft Fluent 3D, MIT), as the paper's do; they are copied next to the
pictures from the dataset (`unclip data build`) when missing. The pictures are saved as JPEG to keep
the repository small; the commands write PNGs with their settings in the metadata.
"""

import argparse
import io
import shlex
import sys
from pathlib import Path

PROMPTS = [
    "a grinning cat, 3D style", "red heart, flat style", "pizza slice, outline", "a thumbs up, dark skin tone",
    "a waving hand, medium-light skin tone, 3D", "rocket, Noto style", "a very happy yellow face", "a sad face with tears",
    "an orange fruit, flat icon", "a blue car", "a dog face, Twemoji style", "the moon at night",
    "a grumpy pink face", "a green tree, 3D", "a ghost, high contrast", "a birthday cake with candles",
]
SOURCES = {"vampire.png": "fluent-3d_1F9DB", "mermaid.png": "fluent-3d_1F9DC-1F3FD-200D-2640"}  # held-out images


def run(cmd: list[str], log: list[str]) -> None:
    from unclip.cli import main

    log.append("unclip " + " ".join(shlex.quote(c) for c in cmd))
    if main(cmd) != 0:
        raise SystemExit(f"failed: {log[-1]}")


def copy_sources(out: Path, data: Path) -> None:
    from PIL import Image

    from unclip.data.inspect import load_manifest
    from unclip.data.shards import iter_shard

    missing = {key: name for name, key in SOURCES.items() if not (out / name).exists()}
    if not missing:
        return
    for shard in (s["file"] for s in load_manifest(data)["shards"]):
        for key, png, meta in iter_shard(data / shard):
            if key in missing and meta["split"] == "heldout_images":
                Image.open(io.BytesIO(png)).convert("RGB").save(out / missing.pop(key))
    if missing:
        raise SystemExit(f"not in the held-out split of {data}: {', '.join(missing)}")


def to_jpeg(png: Path) -> None:
    from PIL import Image

    Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=88)
    png.unlink()


def main() -> int:
    from PIL import Image, ImageDraw

    from unclip.models import default_model_dir
    from unclip.paths import cache_dir

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/gallery"))
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--data", type=Path, default=cache_dir() / "data" / "emoji")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out, log = a.out, []
    out.mkdir(parents=True, exist_ok=True)
    copy_sources(out, a.data)
    common = ["--seed", str(a.seed)] + (["--model", str(a.model)] if a.model != default_model_dir() else [])
    tiles = []
    for i, prompt in enumerate(PROMPTS):
        f = out / f"prompt-{i:02d}.png"
        run(["generate", prompt, "--num-images", "1", "--out", str(f), *common], log)
        tiles.append((prompt, Image.open(f).convert("RGB")))
        f.unlink()
    side = tiles[0][1].width
    sheet = Image.new("RGB", (4 * side, 4 * (side + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, im) in enumerate(tiles):
        x, y = (i % 4) * side, (i // 4) * (side + 28)
        sheet.paste(im, (x, y))
        draw.text((x + 4, y + side + 6), prompt[:40], fill="black")
    sheet.save(out / "prompts.jpg", quality=88)
    vampire, mermaid = out / "vampire.png", out / "mermaid.png"
    run(["vary", str(vampire), "--num-images", "5", "--out", str(out / "variations.png"), *common], log)
    run(["interpolate", str(vampire), str(mermaid), "--frames", "6", "--out", str(out / "interpolation.png"), *common], log)
    run(["edit", str(vampire), "--from", "vampire, 3D style", "--to", "vampire, high contrast style",
         "--thetas", "0,0.1,0.2,0.3,0.4,0.5", "--out", str(out / "text_diff.png"), *common], log)
    row = Image.open(out / "variations.png")  # 4 + 1 tiles: one row, led by the source image
    tiles = [row.crop((x, y, x + side, y + side)) for y in (0, side) for x in range(0, 4 * side, side)][:5]
    lead = Image.new("RGB", (6 * side, side), "white")
    for i, im in enumerate([Image.open(vampire).convert("RGB").resize((side, side), Image.BICUBIC), *tiles]):
        lead.paste(im, (i * side, 0))
    lead.save(out / "variations.png")
    for name in ("variations", "interpolation", "text_diff"):
        to_jpeg(out / f"{name}.png")
    for ext in (".gif", ".webp"):
        (out / "interpolation").with_suffix(ext).unlink(missing_ok=True)
    (out / "commands.md").write_text("# Commands behind the gallery\n\n"
                                     "One loop over the prompts (tiled into prompts.jpg), then one command per row:\n\n"
                                     + "\n".join(f"    {c}" for c in log) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
