"""WebDataset-style tar shards: `KEY.png` + `KEY.json` per sample, written atomically."""

import io
import json
import tarfile
import time
from pathlib import Path

from unclip.fsutil import atomic_path


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, bytes, dict]]) -> None:
    """Write (key, png bytes, metadata) samples to one tar, atomically."""
    mtime = time.time()
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w") as tar:
            for key, png, meta in samples:
                _add(tar, f"{key}.png", png, mtime)
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode(), mtime)


def iter_shard(path: Path):
    """Yield (key, png bytes, metadata) from a shard, reading it sequentially."""
    pending: dict[str, dict] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition(".")
            f = tar.extractfile(member)
            part = pending.setdefault(key, {})
            part[ext] = f.read() if f else b""
            if "png" in part and "json" in part:
                del pending[key]
                yield key, part["png"], json.loads(part["json"])
