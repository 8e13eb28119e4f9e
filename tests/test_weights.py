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


def test_a_folder_config_that_disagrees_or_extra_tensors_are_errors_naming_them(tiny_model_dir, tmp_path):
    import json
    import shutil

    import pytest
    from safetensors.torch import load_file, save_file

    import unclip

    m = shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = m / "decoder" / "config.json"
    c = json.loads(cfg.read_text())
    heads = c["attention_head_dim"]
    cfg.write_text(json.dumps({**c, "attention_head_dim": heads * 2 if isinstance(heads, int) else [h * 2 for h in heads]}))
    with pytest.raises(ValueError, match="attention_head_dim"):  # same tensor shapes, other heads
        unclip.load(m)
    cfg.write_text(json.dumps(c))
    f = m / "prior" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(f))
    save_file({**tensors, "transformer_blocks.99.attn1.to_q.weight": next(iter(tensors.values())).clone()}, str(f))
    with pytest.raises(ValueError, match="not in the model: transformer_blocks.99"):
        unclip.load(m)
