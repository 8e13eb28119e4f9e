"""The `unclip` command: parses flags and calls the library. No logic of its own.

One module per group of commands, each with a `register(sub)` that adds its subcommands.
"""

import argparse
import sys

from unclip.cli import data, evaluate, images, serve, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unclip", description="unCLIP: text-to-image with CLIP latents")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (data, train, images, evaluate, serve):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from unclip.fastpath import tune_malloc

    args = build_parser().parse_args(argv)
    if getattr(args, "malloc", "tuned") == "tuned":  # `bench generate --malloc default` measures without it
        tune_malloc()  # the command is its own process: keep activations' memory between UNet calls
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, run the same command again to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"unclip: error: {e}", file=sys.stderr)
        return 2
