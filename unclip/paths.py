"""Where unclip keeps downloads, datasets and training runs (XDG cache dir, overridable)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$UNCLIP_CACHE`, else `$XDG_CACHE_HOME/unclip`, else `~/.cache/unclip`."""
    if os.environ.get("UNCLIP_CACHE"):
        return Path(os.environ["UNCLIP_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "unclip"


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


def default_data_dir() -> Path:
    return cache_dir() / "data" / "emoji"


def runs_dir() -> Path:
    return cache_dir() / "runs"
