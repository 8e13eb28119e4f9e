"""`unclip data import`: a user's captioned images -> our shard format, ready for `embed` and `train`.

Sources, in the conventions people already use:
- a folder of images with captions: `metadata.jsonl` or `metadata.csv` (columns `file_name`,
  `text`: the Hugging Face `imagefolder` layout), else a sidecar `NAME.txt` per image (one caption
  per non-empty line);
- WebDataset tar shards as img2dataset writes them (`KEY.jpg|png|webp` + `KEY.txt` or `KEY.json`
  with `caption`/`text`): a .tar file or a folder of them.
Each image is decoded with a pixel limit (unreadable, truncated and huge images are skipped and
counted), composited on white, squared and scaled down to at most `size` px (its native size is
recorded), exact duplicates merged (one image, the captions of both); images without a caption take `default_caption` or are
skipped and counted. A share of images (by key hash) is held out for validation. Output:
`train-NNNNN.tar`, `heldout_images-NNNNN.tar` and a manifest whose build id covers the inputs
and settings, so an unchanged re-run returns at once.
"""

import csv
import hashlib
import io
import json
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from unclip.data.render import MAX_PIXELS, CorruptImage, on_white, open_raster
from unclip.data.shards import write_shard
from unclip.fsutil import write_json_atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
FORMAT = "unclip-import-1"


@dataclass
class ImportConfig:
    src: Path
    out: Path
    size: int = 256
    default_caption: str | None = None
    style: str | None = None  # the style name recorded (default: the source folder's name)
    heldout: float = 0.05
    seed: int = 0
    shard_size: int = 1000
    max_pixels: int = MAX_PIXELS


class NoImages(ValueError):
    pass


def _items(src: Path):
    """Yield (key, image bytes | None, captions, origin) from a folder or tar shards."""
    tars = [src] if src.is_file() and src.suffix == ".tar" else sorted(src.glob("*.tar")) if src.is_dir() else []
    if tars:
        for t in tars:
            yield from _tar_items(t)
        return
    if not src.is_dir():
        raise FileNotFoundError(f"no folder or .tar shard at {src}")
    captions = _folder_captions(src)
    for path in sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        rel = path.relative_to(src).as_posix()
        caps = captions.get(rel)
        if caps is None and path.with_suffix(".txt").exists():
            caps = _lines(path.with_suffix(".txt").read_text(errors="replace"))
        yield rel.rsplit(".", 1)[0].replace("/", "_"), path.read_bytes(), caps or [], rel


def _folder_captions(src: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if (src / "metadata.jsonl").exists():
        for n, line in enumerate((src / "metadata.jsonl").read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.setdefault(row["file_name"], []).extend(_as_list(row.get("text")))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{src / 'metadata.jsonl'} line {n}: {type(e).__name__}: {e}") from None
    elif (src / "metadata.csv").exists():
        with open(src / "metadata.csv", newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file_name", "text"} <= set(reader.fieldnames):
                raise ValueError(f"{src / 'metadata.csv'} needs the columns file_name and text")
            for row in reader:
                out.setdefault(row["file_name"], []).extend(_as_list(row["text"]))
    return out


def _tar_items(path: Path):
    parts: dict[str, dict] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                f = tar.extractfile(m)
                parts.setdefault(f"{Path(m.name).parent.as_posix()}/{key}", {})[ext.lower()] = f.read() if f else b""
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{path}: not a readable tar shard ({e})") from None
    for key, p in sorted(parts.items()):
        image = next((p[e] for e in ("png", "jpg", "jpeg", "webp") if e in p), None)
        caps = _lines(p["txt"].decode(errors="replace")) if "txt" in p else []
        if not caps and "json" in p:
            try:
                meta = json.loads(p["json"])
                caps = _as_list(meta.get("captions") or meta.get("caption") or meta.get("text"))
            except (json.JSONDecodeError, AttributeError):
                caps = []
        if image is None and not caps and "json" not in p:
            continue  # not a sample (e.g. img2dataset's per-shard parquet/stats)
        yield f"{path.stem}_{key.strip('/').replace('/', '_')}", image, caps, f"{path.name}:{key}"


def _as_list(v) -> list[str]:
    if v is None:
        return []
    return [s.strip() for s in (v if isinstance(v, list) else [v]) if isinstance(s, str) and s.strip()]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _input_id(src: Path, cfg: ImportConfig) -> str:
    h = hashlib.sha256(json.dumps({k: str(v) for k, v in asdict(cfg).items() if k != "out"}, sort_keys=True).encode())
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(src) if src.is_dir() else p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def import_images(cfg: ImportConfig, log=print) -> dict:
    """Import, validate and shard; returns the manifest (with `counts` and `skipped`)."""
    from PIL import Image

    src, out = Path(cfg.src).expanduser(), Path(cfg.out).expanduser()
    build_id = _input_id(src, cfg)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("build_id") == build_id:
            log(f"{out} is up to date ({old['counts']['images']} images)")
            return old
    style = cfg.style or (src.stem if src.is_file() else src.name) or "custom"
    seen: dict[str, dict] = {}  # pixel hash -> metadata of the image kept
    samples = {"train": [], "heldout_images": []}
    skipped = {"corrupt": 0, "uncaptioned": 0, "duplicates": 0, "no_image": 0}
    uncaptioned_examples: list[str] = []
    t0 = time.time()
    for key, data, caps, origin in tqdm(_items(src), desc=f"import {src.name}", unit="img"):
        if data is None:
            skipped["no_image"] += 1
            continue
        try:
            im = open_raster(data, cfg.max_pixels)
        except CorruptImage:
            skipped["corrupt"] += 1
            continue
        if not caps:
            if cfg.default_caption is None:
                skipped["uncaptioned"] += 1
                if len(uncaptioned_examples) < 5:
                    uncaptioned_examples.append(origin)
                continue
            caps = [cfg.default_caption]
        native = max(im.size)
        rgb = on_white(im)
        if rgb.width > cfg.size:
            rgb = rgb.resize((cfg.size, cfg.size), Image.Resampling.LANCZOS)
        digest = hashlib.sha1(rgb.tobytes()).hexdigest()
        if digest in seen:  # the same pixels again: one image, with the captions of both
            skipped["duplicates"] += 1
            kept = seen[digest]["captions"]
            kept.extend(c for c in caps if c not in kept)
            continue
        buf = io.BytesIO()
        rgb.save(buf, "PNG")
        split = "heldout_images" if _unit(f"{cfg.seed}:{key}") < cfg.heldout else "train"
        meta = {"key": key, "concept": caps[0].lower(), "concept_label": caps[0], "label": caps[0], "captions": caps,
                "style": style, "style_name": style, "source": origin, "package": str(src), "license": "user-provided",
                "size": rgb.width, "native_size": native, "split": split}
        samples[split].append((key, buf.getvalue(), meta))
        seen[digest] = meta
    total = sum(len(v) for v in samples.values())
    if total == 0:
        raise NoImages(f"no usable image in {src}: {skipped['corrupt']} unreadable, {skipped['uncaptioned']} without "
                       f"a caption (give --default-caption), {skipped['duplicates']} duplicates")
    if not samples["train"]:  # a tiny set: keep at least one image for training...
        samples["train"].append(samples["heldout_images"].pop())
    if not samples["heldout_images"] and len(samples["train"]) >= 2:  # ...and one to validate on
        key, png, meta = samples["train"].pop()
        samples["heldout_images"].append((key, png, {**meta, "split": "heldout_images"}))
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for split, rows in samples.items():
        for i in range(0, len(rows), cfg.shard_size):
            name = f"{split}-{i // cfg.shard_size:05d}.tar"
            write_shard(out / name, rows[i:i + cfg.shard_size])
            shards.append({"file": name, "split": split, "count": len(rows[i:i + cfg.shard_size])})
    manifest = {
        "build_id": build_id, "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, "style": style,
        "shards": shards, "seconds": round(time.time() - t0, 1),
        "splits": {s: {"images": len(r), "concepts": len({m["concept"] for _, _, m in r})} for s, r in samples.items()},
        "counts": {"images": total, "concepts": len({m["concept"] for r in samples.values() for _, _, m in r}),
                   "captions": sum(len(m["captions"]) for r in samples.values() for _, _, m in r)},
        "skipped": skipped, "uncaptioned_examples": uncaptioned_examples,
    }
    keep = {s["file"] for s in shards}
    for old in out.glob("*.tar"):
        if old.name not in keep:
            old.unlink()
    write_json_atomic(manifest_path, manifest)
    return manifest


def _unit(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12
