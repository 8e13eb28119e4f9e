"""Precomputed training inputs, written once next to the shards so training never re-runs encoders.

    DATA/cache/images-R/SPLIT.npy        (N, R, R, 3) uint8 images at R px, + SPLIT.json index
    DATA/cache/text-FP/SPLIT.*.npy        frozen text-tower features of every caption:
                                          pooled (C, 384), tokens (sum T, 384), offsets (C + 1,)
    DATA/cache/clip-HASH/SPLIT.*.npy      z_i (N, D) and z_t (C, D) from one CLIP stage's weights,
                                          + stats.json (mean/std of z_i over train, for the prior)
Directories are keyed by the text tower's and the CLIP weights' hashes: a retrained image tower
never meets stale embeddings. Every array is written atomically; chunked work resumes.
"""

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from unclip.data.inspect import load_manifest
from unclip.data.shards import iter_shard
from unclip.fsutil import atomic_path, write_json_atomic

SPLITS = ("train", "heldout_images", "heldout_concepts")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def image_pack(data: Path, split: str, resolution: int = 64, min_native_size: int = 0) -> tuple[np.ndarray, dict]:
    """(N, R, R, 3) uint8 images of a split and their index; built from the shards once.

    The index holds per image: key, concept, concept_label, style, native_size, and its captions
    (flat list + offsets), in the pack's order.
    """
    data = Path(data).expanduser()
    tag = f"images-{resolution}" + (f"-min{min_native_size}" if min_native_size else "")
    npy, meta = data / "cache" / tag / f"{split}.npy", data / "cache" / tag / f"{split}.json"
    build_id = load_manifest(data)["build_id"]
    if npy.exists() and meta.exists():
        index = json.loads(meta.read_text())
        if index.get("build_id") == build_id:
            return np.load(npy, mmap_mode="r"), index
    m = load_manifest(data)
    files = [s["file"] for s in m["shards"] if s["split"] == split]
    total = sum(s["count"] for s in m["shards"] if s["split"] == split)
    images, index = [], {"build_id": build_id, "keys": [], "concepts": [], "concept_labels": [], "styles": [],
                         "native_sizes": [], "captions": [], "caption_offsets": [0]}
    for f in tqdm(files, desc=f"pack {split} @{resolution}px", unit="shard", total=len(files)):
        for key, png, meta_ in iter_shard(data / f):
            if meta_["native_size"] < min_native_size:
                continue
            im = Image.open(io.BytesIO(png)).convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS if im.width > resolution else Image.Resampling.BICUBIC)
            images.append(np.asarray(im, dtype=np.uint8))
            index["keys"].append(key)
            index["concepts"].append(meta_["concept"])
            index["concept_labels"].append(meta_["concept_label"])
            index["styles"].append(meta_["style"])
            index["native_sizes"].append(meta_["native_size"])
            index["captions"].extend(meta_["captions"])
            index["caption_offsets"].append(len(index["captions"]))
    arr = np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
    assert len(arr) <= total
    save_npy(npy, arr)
    write_json_atomic(meta, index)
    return np.load(npy, mmap_mode="r"), index


def text_features(data: Path, split: str, tower, batch_size: int = 256, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Frozen text-tower features of every caption of a split: pooled, tokens, offsets (fp16)."""
    data = Path(data).expanduser()
    _, index = image_pack(data, split)
    captions = index["captions"]
    root = data / "cache" / f"text-{tower.fingerprint}"
    names = {k: root / f"{split}.{k}.npy" for k in ("pooled", "tokens", "offsets")}
    stamp = root / f"{split}.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("build_id") == index["build_id"] and all(p.exists() for p in names.values()):
        return {k: np.load(p, mmap_mode="r") for k, p in names.items()}
    parts = []
    bar = tqdm(total=len(captions), desc=f"text features {split}", unit="caption")
    for c0 in range(0, len(captions), chunk):
        part = root / "chunks" / f"{split}-{index['build_id']}-{c0:08d}.npz"
        if not part.exists():
            pooled, tokens, lengths = [], [], []
            for b0 in range(c0, min(c0 + chunk, len(captions)), batch_size):
                p, h, mask = tower(captions[b0:min(b0 + batch_size, c0 + chunk, len(captions))])
                pooled.append(p.float().cpu().numpy().astype(np.float16))
                for row, m in zip(h, mask):
                    tokens.append(row[m].float().cpu().numpy().astype(np.float16))  # (T_i, 384)
                lengths.extend(mask.sum(1).tolist())
            with atomic_path(part) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, pooled=np.concatenate(pooled), tokens=np.concatenate(tokens), lengths=np.array(lengths))
        parts.append(part)
        bar.update(min(chunk, len(captions) - c0))
    bar.close()
    loaded = [np.load(p) for p in parts]
    lengths = np.concatenate([z["lengths"] for z in loaded]) if loaded else np.zeros(0, np.int64)
    out = {
        "pooled": np.concatenate([z["pooled"] for z in loaded]) if loaded else np.zeros((0, tower.width), np.float16),
        "tokens": np.concatenate([z["tokens"] for z in loaded]) if loaded else np.zeros((0, tower.width), np.float16),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }
    for k, arr in out.items():
        save_npy(names[k], arr)
    write_json_atomic(stamp, {"build_id": index["build_id"], "captions": len(captions)})
    for p in parts:
        p.unlink()
    return {k: np.load(p, mmap_mode="r") for k, p in names.items()}


def weights_hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@torch.no_grad()
def clip_embeddings(data: Path, split: str, clip, clip_dir: Path, batch_size: int = 256) -> dict[str, np.ndarray]:
    """z_i of every image and z_t of every caption of a split, from the CLIP stage in `clip_dir`.

    Keyed to the hash of its weights file, so a retrained image tower never meets stale embeddings.
    """
    data = Path(data).expanduser()
    images, index = image_pack(data, split)
    root, names, stamp = _clip_cache_files(data, split, clip_dir)
    cached = _current(names, stamp, index["build_id"])
    if cached is not None:
        return cached
    pooled = text_features(data, split, clip.text_tower)["pooled"]
    clip.eval()
    z_i = [clip.encode_image(torch.from_numpy(np.array(images[b:b + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1)
           for b in tqdm(range(0, len(images), batch_size), desc=f"z_i {split}", unit="batch")]
    z_t = [clip.project_text(torch.from_numpy(pooled[b:b + 4096].astype(np.float32))) for b in range(0, len(pooled), 4096)]
    out = {"image_embed": torch.cat(z_i).numpy().astype(np.float16) if z_i else np.zeros((0, clip.embed_dim), np.float16),
           "text_embed": torch.cat(z_t).numpy().astype(np.float16) if z_t else np.zeros((0, clip.embed_dim), np.float16)}
    for k, arr in out.items():
        save_npy(names[k], arr)
    if split == "train":
        z = out["image_embed"].astype(np.float32)
        write_json_atomic(root / "stats.json", {"image_embed_mean": z.mean(0).tolist(), "image_embed_std": z.std(0).tolist()})
    write_json_atomic(stamp, {"build_id": index["build_id"], "images": len(images)})
    return {k: np.load(p, mmap_mode="r") for k, p in names.items()}


def cached_clip_embeddings(data: Path, split: str, clip_dir: Path) -> dict[str, np.ndarray] | None:
    """`clip_embeddings`' arrays where they are cached for this build and these CLIP weights, else None
    (computes nothing)."""
    _, names, stamp = _clip_cache_files(data, split, clip_dir)
    return _current(names, stamp, image_pack(data, split)[1]["build_id"]) if stamp.exists() else None


def _clip_cache_files(data: Path, split: str, clip_dir: Path) -> tuple[Path, dict[str, Path], Path]:
    """The cache directory of one CLIP stage's weights, a split's z_i / z_t arrays in it and their stamp."""
    root = Path(data).expanduser() / "cache" / f"clip-{weights_hash(Path(clip_dir) / 'clip.safetensors')}"
    return root, {k: root / f"{split}.{k}.npy" for k in ("image_embed", "text_embed")}, root / f"{split}.json"


def _current(names: dict[str, Path], stamp: Path, build_id: str) -> dict[str, np.ndarray] | None:
    if stamp.exists() and json.loads(stamp.read_text()).get("build_id") == build_id and all(p.exists() for p in names.values()):
        return {k: np.load(p, mmap_mode="r") for k, p in names.items()}
    return None


def image_embed_stats(data: Path, clip_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of z_i over the training split (the prior standardises by them)."""
    root, _, _ = _clip_cache_files(data, "train", clip_dir)
    s = json.loads((root / "stats.json").read_text())
    return np.asarray(s["image_embed_mean"], np.float32), np.asarray(s["image_embed_std"], np.float32)
