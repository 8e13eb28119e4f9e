"""A real 2-process run (accelerate launch, gloo on CPU) equals a 1-process run at the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from unclip.weights import load_safetensors

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(data, clip, out):
    return ["train", "prior", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "4",
            "--batch-size", "8", "--warmup-steps", "1", "--lr", "1e-3", "--option", f"clip={clip}"]


def test_two_process_gloo_run_equals_one_process(built_dataset, tiny_clip_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "unclip", *_train_args(built_dataset, tiny_clip_dir, tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                          "-m", "unclip", *_train_args(built_dataset, tiny_clip_dir, tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "on 2 process(es)" in two.stdout + two.stderr
    metrics = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 4, "ranks_in_sync": True} in metrics
    a = load_safetensors(tmp_path / "one" / "checkpoint" / "model.safetensors")
    b = load_safetensors(tmp_path / "two" / "checkpoint" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)  # Adam amplifies float summation-order noise
    loss_one = [m["loss"] for m in map(json.loads, (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    loss_two = [m["loss"] for m in metrics if "loss" in m]
    torch.testing.assert_close(torch.tensor(loss_one), torch.tensor(loss_two), rtol=1e-4, atol=1e-5)
