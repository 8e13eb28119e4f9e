"""`unclip data build`: registry packages -> rendered, captioned, split, sharded emoji dataset.

Three resumable phases, each writing atomically so an interrupted run continues where it stopped:
  1. fetch   verified tarballs cached under ~/.cache/unclip/downloads
  2. render  one part file per source (`parts/NAME-SIZE.tar` + index), skipped when present
  3. shards  dedup, split by concept, caption, shuffle, write `SPLIT-NNNNN.tar` + manifest.json
A run whose inputs match the manifest's build id returns at once.
"""

import hashlib
import json
import multiprocessing
import os
import random
import re
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from unclip.data import registry
from unclip.data.captions import make_captions
from unclip.data.emojidb import EmojiDB, norm_hex
from unclip.data.render import CorruptImage, render
from unclip.data.shards import iter_shard, write_shard
from unclip.data.sources import Source, metadata_packages, resolve
from unclip.fsutil import write_bytes_atomic, write_json_atomic
from unclip.paths import default_data_dir, downloads_dir

FORMAT_VERSION = 1
SPLITS = ("train", "heldout_images", "heldout_concepts")
EXTENSIONS = {"svg": ".svg", "png": ".png", "webp": ".webp"}


@dataclass
class BuildConfig:
    out: Path = field(default_factory=default_data_dir)
    sources: list[str] | None = None  # None: the default list in sources.json
    size: int = 256  # vector art is rendered at this side length
    limit: int | None = None  # at most this many images per source (a quick slice)
    allow_noncommercial: bool = False
    heldout_concepts: float = 0.05  # fraction of concepts never seen in training
    heldout_images: float = 0.03  # fraction of the remaining images held out
    seed: int = 0
    shard_size: int = 1000
    jobs: int = 0  # render processes; 0: one per core
    split_version: int = 1  # 1: the shipped model's split; 2: leak-free (see assign_split)

    def build_id(self, sources: list[Source]) -> str:
        d = asdict(self)
        for k in ("out", "jobs"):
            d.pop(k)
        if d["split_version"] == 1:  # version 1 datasets keep the id they were built (and trained) with
            d.pop("split_version")
        d["sources"] = [(s.name, s.package, s.version) for s in sources]
        d["format"] = FORMAT_VERSION
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _unit(text: str) -> float:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


def concept_family(label: str) -> str:
    """A concept label with gender and direction taken out: "woman teacher" and "teacher" meet."""
    label = re.sub(r":? ?facing right", "", label.lower())
    label = re.sub(r"\b(man|woman|person|men|women|people)\b", "", label)
    label = re.sub(r"([:,])(\s*,)+", r"\1", label)  # "family: , boy" -> "family: boy"
    return re.sub(r"\s+", " ", label).strip(" :,")


def assign_split(concept: str, key: str, cfg: BuildConfig, label: str = "", style: str = "") -> str:
    """Held-out concepts first, then held-out images of seen concepts, each by a hash of its unit.

    split_version 1 (the shipped model's): concepts by concept (skin tones folded), images one by one,
    so a held-out image can have a skin-tone sibling of the same style in training (a near copy), and
    "woman teacher" can be held out while "teacher" trains. Version 2 (leak-free): concepts by family
    (`concept_family` of the label: gender and direction folded) and images by concept and style (every
    skin tone of one emoji in one style together)."""
    if cfg.split_version == 2:
        concept_unit, image_unit = f"family:{concept_family(label or concept)}", f"image:{concept}:{style}"
    elif cfg.split_version == 1:
        concept_unit, image_unit = f"concept:{concept}", f"image:{key}"
    else:
        raise ValueError(f"split_version must be 1 or 2, got {cfg.split_version!r}")
    if _unit(f"{cfg.seed}:{concept_unit}") < cfg.heldout_concepts:
        return "heldout_concepts"
    if _unit(f"{cfg.seed}:{image_unit}") < cfg.heldout_images:
        return "heldout_images"
    return "train"


def build(cfg: BuildConfig, log=print) -> dict:
    t0 = time.time()
    sources = resolve(cfg.sources, cfg.allow_noncommercial)
    out = Path(cfg.out).expanduser()
    build_id = cfg.build_id(sources)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("build_id") == build_id and all((out / s["file"]).exists() for s in old["shards"]):
            log(f"{out}: up to date ({old['counts']['images']} images); nothing to do")
            return old

    tarballs = _fetch_all(sources, log)
    meta = metadata_packages()
    openmoji = tarballs.get(("openmoji", meta["openmoji"]["version"]))
    db = EmojiDB.from_packages(tarballs[(meta["emojibase"]["package"], meta["emojibase"]["version"])], openmoji)

    parts = [_render_source(s, tarballs[(s.package, s.version)], db, cfg, out) for s in sources]
    manifest_path.unlink(missing_ok=True)  # shards are rewritten under their names: an interrupted run must
    manifest = _write_shards(sources, parts, db, cfg, out, build_id, log)  # not look "up to date" over a mix
    manifest["seconds"] = round(time.time() - t0, 1)
    write_bytes_atomic(out / "ATTRIBUTION.md", attribution(sources).encode())
    write_json_atomic(manifest_path, manifest)
    keep = {s["file"] for s in manifest["shards"]}
    for stale in out.glob("*.tar"):
        if stale.name not in keep:
            stale.unlink()
    c = manifest["counts"]
    log(f"{out}: {c['images']} images, {c['concepts']} concepts, {c['distinct_captions']} distinct captions "
        f"in {manifest['seconds']} s")
    return manifest


def ensure_dataset(path: Path, log=print) -> Path:
    """The dataset at PATH, built first when PATH is the default one and holds none: on a fresh machine
    `unclip train ... --resume` and `unclip eval` rebuild what they read (`unclip data build`, ~4 min on
    2 cores). Any other PATH without a dataset is an error: it may be a typo, and its build options are
    the user's to choose."""
    path = Path(path).expanduser()
    if (path / "manifest.json").exists():
        return path
    if path.resolve() != default_data_dir().resolve():
        raise FileNotFoundError(f"no dataset at {path} (run `unclip data build --out {path}` first)")
    log(f"no dataset at {path}: building the default emoji dataset first (`unclip data build`)")
    build(BuildConfig(out=path), log=log)
    return path


def _fetch_all(sources: list[Source], log) -> dict[tuple[str, str], Path]:
    meta = metadata_packages()
    wanted = {(s.package, s.version) for s in sources}
    wanted.add((meta["emojibase"]["package"], meta["emojibase"]["version"]))
    if any(s.package == meta["openmoji"]["package"] for s in sources):
        wanted.add((meta["openmoji"]["package"], meta["openmoji"]["version"]))
    cache = downloads_dir()
    return {pv: registry.fetch(*pv, cache) for pv in tqdm(sorted(wanted), desc="fetch", unit="pkg")}


def _render_task(args):
    name, data, fmt, size = args
    try:
        return name, render(data, fmt, size), None
    except CorruptImage as e:
        return name, None, str(e)


def _artwork_files(source: Source, tar: tarfile.TarFile):
    """(file stem, bytes) of every artwork file of `source` in its tarball."""
    if source.format == "iconify":  # one JSON of SVG bodies sharing a default viewBox
        f = tar.extractfile(source.members)
        icon_set = json.load(f) if f else {"icons": {}}
        for name, icon in icon_set["icons"].items():
            w, h = icon.get("width", icon_set.get("width", 16)), icon.get("height", icon_set.get("height", 16))
            x, y = icon.get("left", icon_set.get("left", 0)), icon.get("top", icon_set.get("top", 0))
            svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x} {y} {w} {h}">{icon["body"]}</svg>'
            yield name, svg.encode()
        return
    ext = EXTENSIONS[source.format]
    for m in tar:
        if m.isfile() and m.name.startswith(source.members) and m.name.endswith(ext):
            stem = m.name[len(source.members):-len(ext)]
            if "/" not in stem:
                yield stem, tar.extractfile(m).read()


def artwork_info(source: Source, stem: str, db: EmojiDB):
    """The emoji an artwork file (named `stem`) shows: (EmojiInfo, None), else (None, "unlabelled" |
    "excluded"): no emoji label for its name or codepoints, or in a group the source leaves out."""
    hexcode = db.name_hexcode(stem) if source.naming == "name" else norm_hex(stem)
    info = db.get(hexcode) if hexcode else None
    if info is None:
        return None, "unlabelled"
    if info.group_key in source.exclude:
        return None, "excluded"
    return info, None


def _source_members(source: Source, tgz: Path, db: EmojiDB, cfg: BuildConfig, counts: dict):
    """(hexcode, bytes) of the artwork files this source contributes, labelled and filtered."""
    items = []
    with tarfile.open(tgz) as tar:
        for stem, data in _artwork_files(source, tar):
            info, why = artwork_info(source, stem, db)
            if info is None:
                counts[why] += 1
                continue
            items.append((info.hexcode, data))
    items = list({h: (h, data) for h, data in reversed(items)}.values())  # one file per hexcode, the first
    items.sort(key=lambda it: hashlib.sha1(it[0].encode()).digest())  # a --limit slice spans all groups
    return items[: cfg.limit] if cfg.limit else items


def _render_source(source: Source, tgz: Path, db: EmojiDB, cfg: BuildConfig, out: Path) -> dict:
    """Render one source into parts/NAME-SIZE[-limitN].tar with an index; reuse it when present."""
    tag = f"{source.name}-{source.version}-{cfg.size}-v{FORMAT_VERSION}" + (f"-limit{cfg.limit}" if cfg.limit else "")
    part_tar, part_index = out / "parts" / f"{tag}.tar", out / "parts" / f"{tag}.json"
    if part_tar.exists() and part_index.exists():
        return json.loads(part_index.read_text()) | {"tar": str(part_tar)}
    counts = {"rendered": 0, "corrupt": 0, "unlabelled": 0, "excluded": 0}
    items = _source_members(source, tgz, db, cfg, counts)
    jobs = cfg.jobs or os.cpu_count() or 1
    tasks = ((h, data, source.format, cfg.size) for h, data in items)
    entries, samples = [], []
    bar = tqdm(total=len(items), desc=f"render {source.name}", unit="img")
    pool = multiprocessing.get_context("fork").Pool(jobs) if jobs > 1 else None
    try:
        results = pool.imap(_render_task, tasks, chunksize=16) if pool else map(_render_task, tasks)
        for hexcode, r, err in results:
            bar.update()
            if r is None:
                counts["corrupt"] += 1
                continue
            counts["rendered"] += 1
            entries.append({"hexcode": hexcode, "sha1": r.sha1, "size": r.size, "native_size": r.native_size})
            samples.append((hexcode, r.png, {}))
    finally:
        bar.close()
        if pool:
            pool.terminate()
    write_shard(part_tar, samples)
    index = {"source": source.name, "entries": entries, "counts": counts}
    write_json_atomic(part_index, index)
    return index | {"tar": str(part_tar)}


def _write_shards(sources, parts, db: EmojiDB, cfg: BuildConfig, out: Path, build_id: str, log) -> dict:
    seen: set[str] = set()
    by_split: dict[str, list] = {s: [] for s in SPLITS}
    skipped = {"duplicates": 0, "corrupt": 0, "unlabelled": 0, "excluded": 0}
    per_source = {}
    for source, part in zip(sources, parts):
        for k in ("corrupt", "unlabelled", "excluded"):
            skipped[k] += part["counts"][k]
        pngs = {key: png for key, png, _ in iter_shard(Path(part["tar"]))}
        kept = 0
        for e in part["entries"]:
            if e["sha1"] in seen:
                skipped["duplicates"] += 1
                continue
            seen.add(e["sha1"])
            info = db.get(e["hexcode"])
            key = f"{source.style}_{info.hexcode}"
            split = assign_split(info.concept, key, cfg, info.base_label, source.style)
            meta = {
                "key": key, "hexcode": info.hexcode, "concept": info.concept, "label": info.label,
                "concept_label": info.base_label, "captions": make_captions(info, source.style_names, key),
                "style": source.style, "style_name": source.style_names[0], "tone": info.tone,
                "group": info.group, "subgroup": info.subgroup, "source": source.name,
                "package": f"{source.package}@{source.version}", "license": source.license,
                "size": e["size"], "native_size": e["native_size"], "split": split,
            }
            by_split[split].append((key, pngs[info.hexcode], meta))
            kept += 1
        per_source[source.name] = {"images": kept, **part["counts"]}

    shards, splits = [], {}
    rng = random.Random(cfg.seed)
    for split, samples in by_split.items():
        samples.sort(key=lambda s: s[0])
        rng.shuffle(samples)
        n_shards = max(1, -(-len(samples) // cfg.shard_size)) if samples else 0
        for i in tqdm(range(n_shards), desc=f"shards {split}", unit="shard"):
            chunk = samples[i * cfg.shard_size:(i + 1) * cfg.shard_size]
            name = f"{split}-{i:05d}.tar"
            write_shard(out / name, chunk)
            shards.append({"file": name, "split": split, "count": len(chunk)})
        splits[split] = _summary([m for _, _, m in samples])
    every = [m for samples in by_split.values() for _, _, m in samples]
    counts = _summary(every)
    counts["per_source"] = per_source
    counts["skipped"] = skipped
    return {
        "build_id": build_id, "format": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "jobs")},
        "sources": [{"name": s.name, "package": s.package, "version": s.version, "license": s.license,
                     "style": s.style, "native_size": s.native_size} for s in sources],
        "shards": shards, "splits": splits, "counts": counts,
    }


def _summary(metas: list[dict]) -> dict:
    styles: dict[str, int] = {}
    for m in metas:
        styles[m["style"]] = styles.get(m["style"], 0) + 1
    return {
        "images": len(metas),
        "concepts": len({m["concept"] for m in metas}),
        "distinct_captions": len({c for m in metas for c in m["captions"]}),
        "per_style": dict(sorted(styles.items())),
    }


def attribution(sources: list[Source]) -> str:
    lines = ["# Attribution", "", "The images in this dataset are artwork from these packages:", ""]
    for s in sources:
        lines.append(f"- **{s.style}** from `{s.package}@{s.version}` ({s.license}): {s.attribution}")
    if any("SA" in s.license for s in sources):
        lines += ["", "Share-alike: images from CC-BY-SA sources, and works adapted from them, must be "
                  "shared under the same licence."]
    return "\n".join(lines) + "\n"
