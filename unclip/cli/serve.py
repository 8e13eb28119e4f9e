"""`unclip serve`."""

import argparse
import sys
from pathlib import Path

from unclip.cli.common import add_precision


def _positive(kind):
    def parse(text: str):
        v = kind(text)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v
    parse.__name__ = kind.__name__
    return parse


def register(sub) -> None:
    sv = sub.add_parser("serve", help="REST API (+ A1111 txt2img) and a web page, on one model worker")
    sv.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require this key (default: $UNCLIP_API_KEY; none: open)")
    sv.add_argument("--max-queue", type=_positive(int), default=8, help="jobs waiting before requests get 429")
    sv.add_argument("--max-images", type=_positive(int), default=8, help="images per request")
    sv.add_argument("--max-rerank", type=_positive(int), default=4, help="`rerank` candidates per image")
    sv.add_argument("--max-steps", type=_positive(int), default=100, help="steps per stage per request")
    sv.add_argument("--max-upload-mb", type=_positive(float), default=8.0, help="largest request body")
    sv.add_argument("--max-pixels", type=_positive(int), default=4096 * 4096, help="largest uploaded image (width × height)")
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="also answer this Host name when bound to loopback (repeat; e.g. the name a reverse proxy "
                         "on this machine forwards)")
    sv.add_argument("--threads", type=int, default=0)
    add_precision(sv)
    sv.set_defaults(fn=_serve)


def _serve(a) -> int:
    import os

    from unclip.serve import serve
    from unclip.serve.app import Limits

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise RuntimeError("serving needs the serve extra: pip install 'unclip[serve]'") from None
    key = a.api_key or os.environ.get("UNCLIP_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {a.host} without an API key; anyone who can reach it can use it", file=sys.stderr)
    limits = Limits(max_queue=a.max_queue, max_images=a.max_images, max_rerank=a.max_rerank, max_steps=a.max_steps,
                    max_upload_bytes=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels)
    serve(a.model, a.host, a.port, key, limits, a.threads, precision=a.precision, allowed_hosts=a.allowed_host)
    return 0
