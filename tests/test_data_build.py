import errno
import json
import os
import time

import pytest

from conftest import FIXTURE_SOURCES, NPM
from unclip.data import build as build_mod
from unclip.data.build import BuildConfig, build
from unclip.data.shards import iter_shard


def _cfg(out, **kw):
    return BuildConfig(out=out, sources=FIXTURE_SOURCES, size=64, jobs=1, heldout_concepts=0.25,
                       heldout_images=0.1, shard_size=16, **kw)


def _samples(root):
    m = json.loads((root / "manifest.json").read_text())
    return [meta for s in m["shards"] for _, _, meta in iter_shard(root / s["file"])]


def test_build_counts_splits_and_records(built_dataset):
    m = json.loads((built_dataset / "manifest.json").read_text())
    samples = _samples(built_dataset)
    assert m["counts"]["images"] == len(samples) == sum(s["count"] for s in m["shards"])
    per_source = m["counts"]["per_source"]
    assert per_source["fluent-3d"]["images"] == 3 and per_source["twemoji"]["images"] == 9
    assert per_source["openmoji-color"]["images"] == 8  # includes the OpenMoji-only goldfish
    assert per_source["noto-v1"]["images"] == 4 and per_source["emojione"]["images"] == 3  # Iconify JSON sets
    assert len({s["key"] for s in samples}) == len(samples)
    # split by concept: a held-out concept never appears in another split
    train = {s["concept"] for s in samples if s["split"] == "train"}
    held = {s["concept"] for s in samples if s["split"] == "heldout_concepts"}
    assert held and not held & train
    for s in samples:
        assert s["captions"][0] == f"{s['label'].replace(': ', ', ')}, {s['style_name']} style"
        assert s["license"] and s["package"] and s["native_size"] >= s["size"]
    noto = [s for s in samples if s["style"] == "noto"]
    assert {s["native_size"] for s in noto} == {64}
    text = (built_dataset / "ATTRIBUTION.md").read_text()
    assert "CC BY-SA 4.0" in text and "Twemoji" in text and "Share-alike" in text


def test_second_run_is_up_to_date_without_network(registry, tmp_path):
    out = tmp_path / "ds"
    first = build(_cfg(out), log=lambda *a: None)
    registry.close()  # the registry is gone: the second run must not need it
    lines = []
    t = time.time()
    second = build(_cfg(out), log=lines.append)
    assert time.time() - t < 2 and "up to date" in lines[0]
    assert second == first


def test_interrupted_run_reuses_rendered_parts(registry, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    build(_cfg(out), log=lambda *a: None)
    (out / "manifest.json").unlink()
    for f in out.glob("*.tar"):
        f.unlink()
    monkeypatch.setattr(build_mod, "render", lambda *a: pytest.fail("parts must be reused, not rendered again"))
    m = build(_cfg(out), log=lambda *a: None)
    assert m["counts"]["images"] > 0 and all((out / s["file"]).exists() for s in m["shards"])


def test_corrupt_image_is_skipped_and_counted(registry, tmp_path):
    registry.add_member("@twemoji/svg", "package/1f431.svg", b"<svg><path d=")
    m = build(_cfg(tmp_path / "ds", limit=None), log=lambda *a: None)
    assert m["counts"]["per_source"]["twemoji"]["corrupt"] == 1
    assert m["counts"]["skipped"]["corrupt"] == 1
    assert m["counts"]["per_source"]["twemoji"]["images"] == 9


def test_exact_duplicates_are_dropped(registry, tmp_path):
    svg = (NPM / "twemoji-svg/package/1f600.svg").read_bytes()
    registry.add_member("@twemoji/svg", "package/1f431.svg", svg)  # 'cat face' drawn as grinning face
    m = build(_cfg(tmp_path / "ds"), log=lambda *a: None)
    assert m["counts"]["skipped"]["duplicates"] >= 1


def test_bad_sources_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'nope'; known sources: noto, twemoji"):
        build(BuildConfig(out=tmp_path, sources=["nope"]))
    with pytest.raises(ValueError, match="non-commercial use only; pass --allow-noncommercial"):
        build(BuildConfig(out=tmp_path, sources=["apple"]))


def test_disk_full_keeps_finished_work(registry, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    real_replace = os.replace

    def replace(src, dst):  # the disk fills up when the final shards are written
        if str(dst).endswith(".tar") and "parts" not in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("unclip.fsutil.os.replace", replace)
    with pytest.raises(OSError, match="disk full while writing"):
        build(_cfg(out), log=lambda *a: None)
    assert list((out / "parts").glob("*.tar")), "rendered parts written before the failure are kept"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp")), "no temp files left behind"
    monkeypatch.setattr("unclip.fsutil.os.replace", real_replace)
    m = build(_cfg(out), log=lambda *a: None)
    assert m["counts"]["images"] > 0


def test_split_version_2_keeps_skin_tones_and_gender_twins_on_one_side():
    from unclip.data.build import assign_split, concept_family

    cfg1, cfg2 = BuildConfig(heldout_concepts=0.3, heldout_images=0.3), BuildConfig(heldout_concepts=0.3, heldout_images=0.3, split_version=2)
    tones = [f"1F44B-{t}" for t in ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")]  # one emoji, five skin tones
    concepts = [f"c{i}" for i in range(200)]
    v1 = [{assign_split(c, f"twemoji_{c}_{t}", cfg1, c, "twemoji") for t in tones} for c in concepts]
    v2 = [{assign_split(c, f"twemoji_{c}_{t}", cfg2, c, "twemoji") for t in tones} for c in concepts]
    assert any(len(s) > 1 for s in v1)  # version 1: one skin tone held out, its siblings trained
    assert all(len(s) == 1 for s in v2) and any(s == {"heldout_images"} for s in v2)
    held = {}  # per family: is each of its concepts a held-out concept? all or none
    for i in range(60):
        for label in (f"teacher {i}", f"woman teacher {i}", f"man teacher {i}"):
            held.setdefault(concept_family(label), set()).add(assign_split(label, label, cfg2, label, "noto") == "heldout_concepts")
    assert len(held) == 60 and all(len(s) == 1 for s in held.values()) and {True} in held.values()
    with pytest.raises(ValueError, match="split_version must be 1 or 2"):
        assign_split("c", "k", BuildConfig(split_version=3))
    assert BuildConfig().build_id([]) != BuildConfig(split_version=2).build_id([])


def test_split_version_2_build(registry, tmp_path):
    samples = _samples(build(_cfg(tmp_path / "v2", split_version=2), log=lambda *a: None) and tmp_path / "v2")
    side = {}
    for s in samples:
        side.setdefault((s["concept"], s["style"]), set()).add(s["split"])
    assert all(len(v) == 1 for v in side.values())
    train = {build_mod.concept_family(s["concept_label"]) for s in samples if s["split"] == "train"}
    held = {build_mod.concept_family(s["concept_label"]) for s in samples if s["split"] == "heldout_concepts"}
    assert held and not held & train


def test_ensure_dataset_builds_the_default_one_only(registry, built_dataset, tmp_path):
    from unclip.data.build import ensure_dataset
    from unclip.paths import default_data_dir

    assert ensure_dataset(built_dataset, log=None) == built_dataset  # present: nothing to do (log unused)
    with pytest.raises(FileNotFoundError, match=r"no dataset at .*missing \(run `unclip data build --out .*missing` first\)"):
        ensure_dataset(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    lines = []
    root = ensure_dataset(default_data_dir(), log=lines.append)  # a fresh machine: the default dataset is built
    m = json.loads((root / "manifest.json").read_text())
    assert root == default_data_dir() and m["counts"]["images"] > 0 and set(m["splits"]) >= {"train", "heldout_concepts"}
    assert lines[0].startswith(f"no dataset at {root}: building")
