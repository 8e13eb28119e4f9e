"""Stream the shards as training samples: image tensors at a requested resolution plus captions.

Shards are split across distributed ranks and DataLoader workers (shard `i` goes to reader
`i % readers`); when there are fewer shards than readers, every reader scans all shards and keeps
every `readers`-th sample instead, so no sample is read twice either way.
"""

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.shards import iter_shard


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def to_tensor(im: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image -> (3, R, R) float tensor in [-1, 1]."""
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC if im.width < resolution else Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())  # (R, R, 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1.0)  # (3, R, R)


class EmojiShards(IterableDataset):
    """Samples `{"image": (3,R,R), "caption": str, "key", "concept", "style", "native_size"}`.

    caption: "random" draws one of the image's captions per epoch, "first" takes the canonical one.
    min_native_size: keep only images whose artwork is at least this large (upsampler targets).
    """

    def __init__(self, root: Path, split: str = "train", resolution: int = 64, *, shuffle: bool = True,
                 seed: int = 0, caption: str = "random", shuffle_buffer: int = 1000,
                 min_native_size: int = 0, rank: int | None = None, world_size: int | None = None):
        root = Path(root).expanduser()
        manifest = root / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"no dataset at {root} (run `unclip data build` first)")
        m = json.loads(manifest.read_text())
        self.shards = [root / s["file"] for s in m["shards"] if s["split"] == split]
        if not self.shards:
            raise ValueError(f"split {split!r} has no shards; splits: {', '.join(m['splits'])}")
        if caption not in ("random", "first"):
            raise ValueError(f"caption must be 'random' or 'first', not {caption!r}")
        self.num_samples = m["splits"][split]["images"]
        self.resolution, self.shuffle, self.seed, self.caption = resolution, shuffle, seed, caption
        self.shuffle_buffer, self.min_native_size = shuffle_buffer, min_native_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _reader(self) -> tuple[int, int]:
        rank, world = _dist_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        return rank * nw + wid, world * nw

    def _raw(self, rng: random.Random):
        reader, readers = self._reader()
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # same order on every reader
        by_shard = len(order) >= readers
        mine = order[reader::readers] if by_shard else order
        n = 0
        for i in mine:
            for key, png, meta in iter_shard(self.shards[i]):
                if not by_shard:
                    n += 1
                    if (n - 1) % readers != reader:
                        continue
                if meta.get("native_size", 0) < self.min_native_size:
                    continue
                yield key, png, meta

    def __iter__(self):
        reader, _ = self._reader()
        rng = random.Random(f"{self.seed}:{self.epoch}:{reader}")
        stream = self._raw(rng)
        if self.shuffle and self.shuffle_buffer > 1:
            stream = _buffered_shuffle(stream, self.shuffle_buffer, rng)
        for key, png, meta in stream:
            caption = rng.choice(meta["captions"]) if self.caption == "random" else meta["captions"][0]
            yield {
                "image": to_tensor(Image.open(io.BytesIO(png)), self.resolution),
                "caption": caption, "key": key, "concept": meta["concept"], "style": meta["style"],
                "native_size": meta["native_size"],
            }


def _buffered_shuffle(stream, size: int, rng: random.Random):
    buf = []
    for item in stream:
        buf.append(item)
        if len(buf) >= size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf
