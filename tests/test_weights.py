import pytest
import torch

from unclip.weights import load_safetensors, save_safetensors


def test_pickle_checkpoints_are_refused_with_a_way_out(tmp_path):
    for name in ("model.bin", "model.ckpt", "model.pt"):
        (tmp_path / name).write_bytes(b"not loaded")
        with pytest.raises(ValueError, match="pickle-based checkpoint.*safetensors.torch.save_file"):
            load_safetensors(tmp_path / name)


def test_safetensors_roundtrip_and_missing_file(tmp_path):
    t = {"w": torch.arange(6.0).view(2, 3)}
    save_safetensors(t, tmp_path / "w.safetensors")
    assert torch.equal(load_safetensors(tmp_path / "w.safetensors")["w"], t["w"])
    assert not list(tmp_path.glob(".*.tmp")), "atomic write leaves no temp file"
    with pytest.raises(FileNotFoundError, match="missing weights file"):
        load_safetensors(tmp_path / "nope.safetensors")


def test_atomic_writes_honour_the_umask(tmp_path):
    import os

    from unclip.fsutil import write_bytes_atomic

    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644  # readable by others, like any model file
