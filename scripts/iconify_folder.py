"""Write one emoji source that the shipped model never saw as a user's image folder (issue 11's example).

    python scripts/iconify_folder.py fxemoji data/fxemoji_folder [--limit 400]

The folder is what `unclip data import` / `unclip finetune` read: `NAME.png` (256 px, rendered) + `metadata.jsonl` (`file_name`, `text`: the captions the build would give the
image, in the source's own style names, e.g. "grinning face, FxEmoji style"). Icons that map to no
emoji label, are in a group the source excludes, or do not render are left out (counted).
"""

import argparse
import json
import tarfile
from pathlib import Path

from unclip.data import registry
from unclip.data.build import _artwork_files, artwork_info
from unclip.data.captions import make_captions
from unclip.data.emojidb import EmojiDB
from unclip.data.render import CorruptImage, render
from unclip.data.sources import all_sources, metadata_packages
from unclip.paths import downloads_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a source of unclip/data/sources.json, e.g. fxemoji")
    ap.add_argument("out", type=Path)
    ap.add_argument("--limit", type=int, help="at most this many images (the first by name)")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    source = all_sources()[args.source]
    meta = metadata_packages()
    db = EmojiDB.from_packages(registry.fetch(meta["emojibase"]["package"], meta["emojibase"]["version"], downloads_dir()))
    tgz = registry.fetch(source.package, source.version, downloads_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    rows, seen, counts = [], set(), {"unlabelled": 0, "excluded": 0, "unreadable": 0}
    with tarfile.open(tgz) as tar:
        for stem, data in sorted(_artwork_files(source, tar)):
            info, why = artwork_info(source, stem, db)  # as the build labels it
            if info is None:
                counts[why] += 1
                continue
            if info.hexcode in seen:  # one image per emoji, the first by name
                continue
            try:
                png = render(data, source.format, args.size).png
            except CorruptImage:
                counts["unreadable"] += 1
                continue
            seen.add(info.hexcode)
            name = f"{stem}.png"
            (args.out / name).write_bytes(png)
            rows.append({"file_name": name, "text": make_captions(info, source.style_names, stem)})
            if args.limit and len(rows) >= args.limit:
                break
    (args.out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not rows:
        raise SystemExit(f"no image of {source.name} could be labelled and rendered ({counts})")
    print(f"{len(rows)} images of {source.name} ({source.license}, {source.attribution}) in {args.out}; left out: "
          f"{counts['unlabelled']} without an emoji label, {counts['excluded']} excluded groups, "
          f"{counts['unreadable']} unreadable")


if __name__ == "__main__":
    main()
