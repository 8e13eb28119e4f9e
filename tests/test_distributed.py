"""Real multi-process runs (accelerate launch, gloo on CPU): DDP and FSDP2 equal a 1-process run
at the same global batch, and an FSDP run resumes exactly."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unclip.weights import load_safetensors

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data, clip, out, steps=4, *extra):
    return ["train", "prior", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "8", "--warmup-steps", "1", "--lr", "1e-3", "--option", f"clip={clip}", *extra]


def _launch(args, processes=2):
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "unclip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_weights(a, b, atol=2e-4):  # Adam amplifies float summation-order noise (1.14e-4 seen on one CPU)
    for name in ("model.safetensors", "ema.safetensors"):
        x, y = load_safetensors(a / "checkpoint" / name), load_safetensors(b / "checkpoint" / name)
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def one_process(built_dataset, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    r = subprocess.run([sys.executable, "-m", "unclip", *_args(built_dataset, tiny_clip_dir, out)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_two_process_ddp_run_equals_one_process(built_dataset, tiny_clip_dir, tmp_path, one_process):
    out = _launch(_args(built_dataset, tiny_clip_dir, tmp_path / "two"))
    assert "on 2 process(es)" in out
    assert {"step": 4, "ranks_in_sync": True} in _metrics(tmp_path / "two")
    _assert_same_weights(one_process, tmp_path / "two")
    loss_one = [m["loss"] for m in _metrics(one_process) if "loss" in m]
    loss_two = [m["loss"] for m in _metrics(tmp_path / "two") if "loss" in m]
    torch.testing.assert_close(torch.tensor(loss_one), torch.tensor(loss_two), rtol=1e-4, atol=1e-5)


def test_fsdp_run_resumes_and_equals_one_process(built_dataset, tiny_clip_dir, tmp_path, one_process):
    run = tmp_path / "fsdp"
    out = _launch(_args(built_dataset, tiny_clip_dir, run, 2, "--fsdp"))
    assert "FSDP" in out
    _launch(_args(built_dataset, tiny_clip_dir, run, 4, "--fsdp", "--resume"))
    _assert_same_weights(one_process, run)
