"""`unclip data stats` and `unclip data show`: what a built dataset holds, in numbers and pictures."""

import io
import json
import random
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from unclip.data.shards import iter_shard


def load_manifest(root: Path) -> dict:
    path = Path(root).expanduser() / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path.parent} (run `unclip data build` first)")
    return json.loads(path.read_text())


def stats(root: Path) -> dict:
    root = Path(root).expanduser()
    m = load_manifest(root)
    size = sum((root / s["file"]).stat().st_size for s in m["shards"] if (root / s["file"]).exists())
    return {
        "root": str(root), "build_id": m["build_id"], "created": m["created"], "build_seconds": m.get("seconds"),
        "images": m["counts"]["images"], "concepts": m["counts"]["concepts"],
        "distinct_captions": m["counts"]["distinct_captions"], "shard_bytes": size,
        "splits": {k: {kk: v[kk] for kk in ("images", "concepts", "distinct_captions")} for k, v in m["splits"].items()},
        "per_source": m["counts"]["per_source"], "per_style": m["counts"]["per_style"],
        "skipped": m["counts"]["skipped"],
        "per_split_style": {k: v["per_style"] for k, v in m["splits"].items()},
    }


def format_stats(s: dict) -> str:
    lines = [
        f"dataset {s['root']} (build {s['build_id']}, {s['created']}, built in {s['build_seconds']} s)",
        f"  {s['images']} images, {s['concepts']} concepts, {s['distinct_captions']} distinct captions, "
        f"{s['shard_bytes'] / 1e6:.1f} MB of shards",
        "  split               images  concepts  captions",
    ]
    for k, v in s["splits"].items():
        lines.append(f"  {k:<18}{v['images']:>8}{v['concepts']:>10}{v['distinct_captions']:>10}")
    lines.append("  source              images  corrupt  unlabelled  excluded")
    for k, v in s["per_source"].items():
        lines.append(f"  {k:<18}{v['images']:>8}{v['corrupt']:>9}{v['unlabelled']:>12}{v['excluded']:>10}")
    lines.append("  style               " + "  ".join(s["splits"]))
    for style in s["per_style"]:
        row = "".join(f"{s['per_split_style'][k].get(style, 0):>{len(k) + 2}}" for k in s["splits"])
        lines.append(f"  {style:<18}{row}")
    sk = s["skipped"]
    lines.append(f"  skipped: {sk['duplicates']} exact duplicates, {sk['corrupt']} corrupt, "
                 f"{sk['unlabelled']} unlabelled, {sk['excluded']} excluded")
    return "\n".join(lines)


def sample(root: Path, split: str = "train", n: int = 16, seed: int = 0) -> list[tuple[Image.Image, dict]]:
    """`n` random samples of `split` (reservoir sampling over its shards)."""
    root = Path(root).expanduser()
    m = load_manifest(root)
    files = [s["file"] for s in m["shards"] if s["split"] == split]
    if not files:
        raise ValueError(f"split {split!r} is empty; splits: {', '.join(m['splits'])}")
    rng, picked, seen = random.Random(seed), [], 0
    for f in files:
        for key, png, meta in iter_shard(root / f):
            seen += 1
            if len(picked) < n:
                picked.append((png, meta))
            elif (j := rng.randrange(seen)) < n:
                picked[j] = (png, meta)
    return [(Image.open(io.BytesIO(png)).convert("RGB"), meta) for png, meta in picked]


def contact_sheet(items: list[tuple[Image.Image, str]], tile: int = 128, cols: int = 4) -> Image.Image:
    """A grid of images, each with its caption below."""
    font = ImageFont.load_default(size=11)
    text_h = 58
    rows = -(-len(items) // cols)
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (im, caption) in enumerate(items):
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        sheet.paste(im.resize((tile, tile), Image.Resampling.LANCZOS), (x, y))
        for j, line in enumerate(textwrap.wrap(caption, width=tile // 6)[:4]):
            draw.text((x + 3, y + tile + 2 + 13 * j), line, fill="black", font=font)
    return sheet
