"""`unclip data build|import|stats|show` and `unclip embed`."""

import json
from pathlib import Path

from unclip.paths import default_data_dir


def register(sub) -> None:
    data = sub.add_parser("data", help="build and inspect the emoji dataset").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build", help="fetch emoji packages, render, caption, split and shard them")
    b.add_argument("--out", type=Path, default=default_data_dir(), help="dataset directory (default: %(default)s)")
    b.add_argument("--sources", help="comma-separated source names (default: every commercial-use source)")
    b.add_argument("--size", type=int, default=256, help="render size of vector art in pixels (default: 256)")
    b.add_argument("--limit", type=int, help="at most this many images per source (a quick slice)")
    b.add_argument("--jobs", type=int, default=0, help="render processes (default: one per core)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and shuffle (default: 0)")
    b.add_argument("--allow-noncommercial", action="store_true", help="include sources licensed for non-commercial use")
    b.add_argument("--split-version", type=int, choices=(1, 2), default=1,
                   help="1: the shipped model's split (default); 2: leak-free: held-out images drawn per concept and "
                        "style, held-out concepts with gender and direction folded")
    b.set_defaults(fn=_data_build)

    im = data.add_parser("import", help="your captioned images (folder or WebDataset tars) -> shards for embed/train")
    im.add_argument("src", type=Path, help="a folder (metadata.jsonl/.csv or NAME.txt captions) or .tar shards")
    im.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    im.add_argument("--size", type=int, default=256, help="largest side kept, in pixels (default: 256)")
    im.add_argument("--default-caption", help="caption for images that have none (default: skip them)")
    im.add_argument("--style", help="style name recorded for these images (default: the source's name)")
    im.add_argument("--heldout", type=float, default=0.05, help="share of images held out for validation")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--max-pixels", type=int, default=4096 * 4096, help="larger images are skipped")
    im.add_argument("--json", action="store_true")
    im.set_defaults(fn=_data_import)

    s = data.add_parser("stats", help="counts per source, style and split")
    s.add_argument("--data", type=Path, default=default_data_dir())
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_data_stats)

    sh = data.add_parser("show", help="write a contact sheet of random samples with captions")
    sh.add_argument("--data", type=Path, default=default_data_dir())
    sh.add_argument("--split", default="train")
    sh.add_argument("-n", type=int, default=16)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", type=Path, default=Path("contact_sheet.png"))
    sh.set_defaults(fn=_data_show)

    e = sub.add_parser("embed", help="precompute z_i, z_t and caption token states next to the shards")
    e.add_argument("--data", type=Path, default=default_data_dir())
    e.add_argument("--clip", type=Path, help="CLIP stage directory (default: the shipped model, else the CLIP run)")
    e.set_defaults(fn=_embed)


def _data_build(a) -> int:
    from unclip.data.build import BuildConfig, build

    sources = a.sources.split(",") if a.sources else None
    cfg = BuildConfig(out=a.out, sources=sources, size=a.size, limit=a.limit, jobs=a.jobs, seed=a.seed,
                      allow_noncommercial=a.allow_noncommercial, split_version=a.split_version)
    build(cfg)
    return 0


def _data_import(a) -> int:
    from unclip.data.importer import ImportConfig, import_images

    m = import_images(ImportConfig(src=a.src, out=a.out, size=a.size, default_caption=a.default_caption, style=a.style,
                                   heldout=a.heldout, seed=a.seed, max_pixels=a.max_pixels),
                      log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps({k: m[k] for k in ("counts", "splits", "skipped", "style", "uncaptioned_examples")}))
        return 0
    c, sk = m["counts"], m["skipped"]
    print(f"{a.out}: {c['images']} images, {c['captions']} captions ({m['splits']['train']['images']} train, "
          f"{m['splits']['heldout_images']['images']} held out); skipped {sk['corrupt']} unreadable, "
          f"{sk['uncaptioned']} without a caption, {sk['duplicates']} duplicates")
    if m["uncaptioned_examples"]:
        print("  without a caption, e.g.: " + ", ".join(m["uncaptioned_examples"]) + " (--default-caption TEXT keeps them)")
    return 0


def _data_stats(a) -> int:
    from unclip.data.inspect import format_stats, stats

    s = stats(a.data)
    print(json.dumps(s, indent=1) if a.json else format_stats(s))
    return 0


def _data_show(a) -> int:
    from unclip.data.inspect import contact_sheet, sample

    items = sample(a.data, split=a.split, n=a.n, seed=a.seed)
    sheet = contact_sheet([(im, m["captions"][0]) for im, m in items])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out} ({len(items)} {a.split} samples)")
    return 0


def _embed(a) -> int:
    from unclip.conditioning import default_clip_dir, load_clip_dir
    from unclip.data.build import ensure_dataset
    from unclip.embed import SPLITS, clip_embeddings, image_pack, text_features

    clip_dir = a.clip or default_clip_dir()
    clip = load_clip_dir(clip_dir)
    ensure_dataset(a.data)
    for split in SPLITS:
        images, index = image_pack(a.data, split)
        text = text_features(a.data, split, clip.text_tower)
        emb = clip_embeddings(a.data, split, clip, clip_dir)
        print(f"{split}: {len(images)} images, {len(index['captions'])} captions, z_i {tuple(emb['image_embed'].shape)}, "
              f"z_t {tuple(emb['text_embed'].shape)}, token states {tuple(text['tokens'].shape)}")
    return 0
