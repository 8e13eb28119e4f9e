"""The `unclip` command: parses flags and calls the library. No logic of its own."""

import argparse
import json
import sys
from pathlib import Path

from unclip.paths import default_data_dir


def _data_build(a) -> int:
    from unclip.data.build import BuildConfig, build

    sources = a.sources.split(",") if a.sources else None
    cfg = BuildConfig(out=a.out, sources=sources, size=a.size, limit=a.limit, jobs=a.jobs, seed=a.seed,
                      allow_noncommercial=a.allow_noncommercial)
    build(cfg)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unclip", description="unCLIP: text-to-image with CLIP latents")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build and inspect the emoji dataset").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build", help="fetch emoji packages, render, caption, split and shard them")
    b.add_argument("--out", type=Path, default=default_data_dir(), help="dataset directory (default: %(default)s)")
    b.add_argument("--sources", help="comma-separated source names (default: every commercial-use source)")
    b.add_argument("--size", type=int, default=256, help="render size of vector art in pixels (default: 256)")
    b.add_argument("--limit", type=int, help="at most this many images per source (a quick slice)")
    b.add_argument("--jobs", type=int, default=0, help="render processes (default: one per core)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and shuffle (default: 0)")
    b.add_argument("--allow-noncommercial", action="store_true", help="include sources licensed for non-commercial use")
    b.set_defaults(fn=_data_build)

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, run the same command again to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"unclip: error: {e}", file=sys.stderr)
        return 2
