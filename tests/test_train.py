"""The shared trainer's guarantees, on a toy task (a linear model) so each check is exact and fast."""

import json
import math

import pytest
import torch
import torch.nn as nn

from unclip.train import NonFiniteLoss, _lr_factor, TrainConfig, global_batch_indices, sample_generator, train
from unclip.weights import load_safetensors


class ToyTask:
    """y = x @ w_true + noise drawn from the per-sample generators (exercises the keyed randomness)."""

    def __init__(self, n=64, poison_from=None, poison_grad=False):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.x = torch.randn(n, 4)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.poison_from, self.poison_grad, self.calls = poison_from, poison_grad, 0  # poison from the Nth batch on
        self.exported = []

    def __len__(self):
        return len(self.x)

    def batch(self, indices, gens, device):
        noise = torch.stack([0.01 * torch.randn(1, generator=g) for g in gens])
        poison = self.poison_from is not None and self.calls >= self.poison_from
        self.calls += 1
        return {"x": self.x[indices], "y": self.y[indices] + noise, "poison": poison and ("grad" if self.poison_grad else "loss")}

    @staticmethod
    def loss(model, batch):
        x = batch["x"]
        if batch["poison"] == "grad":  # a finite loss whose gradient is NaN
            w = model.weight * 1.0
            w.register_hook(lambda g: g * float("nan"))
            loss = (x @ w.T + model.bias - batch["y"]).pow(2).mean()
        else:
            loss = (model(x) - batch["y"]).pow(2).mean()
        if batch["poison"] == "loss":
            loss = loss * float("nan")
        return loss, {"mse": loss.detach()}

    def eval_model(self):
        return nn.Linear(4, 1)

    def heldout_loss(self, model):
        with torch.no_grad():
            return float((model(self.x) - self.y).pow(2).mean())

    def export(self, model, directory):
        self.exported.append(directory)

    def load_weights(self, directory):
        self.model.load_state_dict(load_safetensors(directory / "w.safetensors"))


def _cfg(tmp_path, name, **kw):
    base = dict(stage="toy", out=tmp_path / name, batch_size=8, lr=0.05, warmup_steps=2, log_every=1,
                eval_every=0, save_minutes=1e9, ema_decay=0.9)
    return TrainConfig(**{**base, **kw})


def _weights(run):
    return load_safetensors(run / "checkpoint" / "model.safetensors")


def test_batches_are_a_function_of_seed_and_step():
    a = global_batch_indices(10, 4, step=3, seed=1)
    assert a == global_batch_indices(10, 4, step=3, seed=1) and len(a) == 4
    epoch = [i for s in range(5) for i in global_batch_indices(10, 4, s, seed=1)][:10]
    assert sorted(epoch) == list(range(10)), "one pass over the data per epoch, no repeats"
    g1, g2 = sample_generator(0, 5, 7), sample_generator(0, 5, 7)
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))
    assert not torch.equal(torch.randn(3, generator=sample_generator(0, 5, 8)), torch.randn(3, generator=sample_generator(0, 6, 7)))


def test_training_lowers_the_loss_and_writes_metrics(tmp_path):
    task = ToyTask()
    out = train(_cfg(tmp_path, "a", max_steps=100, ema_decay=0.5, lr=0.3, lr_schedule="cosine"), task=task, log=lambda m: None)
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [l["loss"] for l in lines if "loss" in l]
    assert losses[-1] < losses[0] / 10
    assert out["best_heldout"] < 0.1 and task.exported


def test_wsd_schedule_and_a_constant_run_switching_to_it(tmp_path):
    cfg = _cfg(tmp_path, "w", max_steps=10, lr_schedule="wsd", decay_steps=4)
    factors = [_lr_factor(s, cfg, warmup=2, start=0) for s in range(10)]
    assert factors[:6] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]  # warm-up, then stable to max_steps - decay_steps
    assert factors[6:] == pytest.approx([0.5 * (1 + math.cos(math.pi * d / 4)) for d in (0, 1, 2, 3)])
    train(_cfg(tmp_path, "w", max_steps=6), task=ToyTask(), log=lambda m: None)  # constant, then resumed as wsd
    train(_cfg(tmp_path, "w", max_steps=10, lr_schedule="wsd", decay_steps=4, resume=True), task=ToyTask(), log=lambda m: None)
    lrs = [l["lr"] for l in map(json.loads, (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()) if "lr" in l]
    assert lrs == pytest.approx([0.05 * f for f in factors])  # the optimizer's own state does not override it
    with pytest.raises(ValueError, match="decay_steps <= max_steps"):
        train(_cfg(tmp_path, "x", max_steps=10, lr_schedule="wsd"), task=ToyTask(), log=lambda m: None)
    with pytest.raises(ValueError, match="lr_schedule must be"):
        train(_cfg(tmp_path, "x", lr_schedule="linear"), task=ToyTask(), log=lambda m: None)


class DropoutToyTask(ToyTask):
    """ToyTask with layer dropout on its inputs: masks from torch's global generator, as nn.Dropout's;
    each step's first global draw is recorded."""

    def __init__(self):
        super().__init__()
        self.draws = []

    def loss(self, model, batch):
        self.draws.append(float(torch.rand(())))
        loss = (model(torch.nn.functional.dropout(batch["x"], 0.5, training=True)) - batch["y"]).pow(2).mean()
        return loss, {"mse": loss.detach()}


@pytest.mark.parametrize("task", [ToyTask, DropoutToyTask])
def test_resume_equals_one_uninterrupted_run(tmp_path, task):
    """Weights and EMA; with layer dropout too: the global generator is reseeded per micro-batch from
    (seed, step, sample), so a resumed run draws the uninterrupted one's masks (not the first steps')."""
    full, first, second = task(), task(), task()
    train(_cfg(tmp_path, "full", max_steps=12), task=full, log=lambda m: None)
    train(_cfg(tmp_path, "split", max_steps=6), task=first, log=lambda m: None)
    train(_cfg(tmp_path, "split", max_steps=12, resume=True), task=second, log=lambda m: None)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    ema_a = load_safetensors(tmp_path / "full" / "checkpoint" / "ema.safetensors")
    ema_b = load_safetensors(tmp_path / "split" / "checkpoint" / "ema.safetensors")
    for k in ema_a:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=0, atol=1e-6)
    if task is DropoutToyTask:  # the same draw per step when resumed, a new one at every step
        assert first.draws + second.draws == full.draws and len(set(full.draws)) == 12


def test_grad_accumulation_matches_the_full_batch(tmp_path):
    train(_cfg(tmp_path, "one", max_steps=5), task=ToyTask(), log=lambda m: None)
    train(_cfg(tmp_path, "acc", max_steps=5, grad_accum=4), task=ToyTask(), log=lambda m: None)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "acc")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_init_from_weights_when_no_checkpoint(tmp_path):
    from unclip.weights import save_safetensors

    src = ToyTask()
    with torch.no_grad():
        src.model.weight.fill_(7.0)
    (tmp_path / "w").mkdir()
    save_safetensors(src.model.state_dict(), tmp_path / "w" / "w.safetensors")
    task = ToyTask()
    msgs = []
    train(_cfg(tmp_path, "init", max_steps=1, lr=1e-9, resume=True, init_from=tmp_path / "w"), task=task, log=msgs.append)
    assert any("fresh optimizer" in m for m in msgs)
    assert torch.allclose(_weights(tmp_path / "init")["weight"], torch.full((1, 4), 7.0), atol=1e-4)


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteLoss, match="3 non-finite losses or gradients in a row"):
        train(_cfg(tmp_path, "nan", max_steps=10, max_bad_steps=3), task=ToyTask(poison_from=0), log=lambda m: None)
    lines = (tmp_path / "nan" / "metrics.jsonl").read_text()
    assert lines.count("non-finite") == 3


def test_non_finite_gradients_are_skipped_and_a_skipped_last_step_still_saves(tmp_path):
    train(_cfg(tmp_path, "g", max_steps=6, max_bad_steps=3), task=ToyTask(poison_from=4, poison_grad=True), log=lambda m: None)
    lines = [json.loads(l) for l in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l.get("skipped") == "non-finite gradient"] == [4, 5]
    state = json.loads((tmp_path / "g" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6  # the final checkpoint, although the final step was skipped
    ema = load_safetensors(tmp_path / "g" / "checkpoint" / "ema.safetensors")
    assert all(torch.isfinite(v).all() for v in [*_weights(tmp_path / "g").values(), *ema.values()])


def test_non_finite_gradients_are_caught_without_clipping_too(tmp_path):
    train(_cfg(tmp_path, "g0", max_steps=6, max_bad_steps=3, grad_clip=0.0), task=ToyTask(poison_from=4, poison_grad=True),
          log=lambda m: None)
    lines = [json.loads(l) for l in (tmp_path / "g0" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l.get("skipped") == "non-finite gradient"] == [4, 5]
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "g0").values())


def test_fp16_without_a_gpu_is_refused_and_runs_switch_precision_in_one_process(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on a GPU")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):  # accelerate would silently run it in fp32 here
        train(_cfg(tmp_path, "h", max_steps=3, mixed_precision="fp16"), task=ToyTask(), log=lambda m: None)
    train(_cfg(tmp_path, "b", max_steps=2, mixed_precision="bf16"), task=ToyTask(), log=lambda m: None)
    train(_cfg(tmp_path, "f", max_steps=2, mixed_precision="no"), task=ToyTask(), log=lambda m: None)  # was refused


def test_bf16_on_a_cpu_without_amx_warns_that_fp32_is_faster(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("bf16 is native on a GPU")
    import unclip.train as train_module

    for native, run in ((False, "slow"), (True, "fast")):
        monkeypatch.setattr(train_module, "native_bf16", lambda device="cpu", native=native: native)
        logs = []
        train(_cfg(tmp_path, run, max_steps=1, mixed_precision="bf16"), task=ToyTask(), log=logs.append)
        assert any("no AMX" in m for m in logs) is not native
    logs = []
    monkeypatch.setattr(train_module, "native_bf16", lambda device="cpu": False)
    train(_cfg(tmp_path, "fp32", max_steps=1, mixed_precision="no"), task=ToyTask(), log=logs.append)
    assert not any("no AMX" in m for m in logs)  # fp32 asked: nothing to warn about


def test_a_run_resumes_only_with_its_own_settings_and_warm_up(tmp_path):
    from unclip.weights import save_safetensors

    train(_cfg(tmp_path, "r", max_steps=2), task=ToyTask(), log=lambda m: None)
    with pytest.raises(ValueError, match="already holds a checkpoint: pass --resume"):
        train(_cfg(tmp_path, "r", max_steps=4), task=ToyTask(), log=lambda m: None)  # a forgotten --resume
    with pytest.raises(ValueError, match="belongs to another run .seed 0 -> 1"):
        train(_cfg(tmp_path, "r", max_steps=4, seed=1, resume=True), task=ToyTask(), log=lambda m: None)
    (tmp_path / "w").mkdir()
    save_safetensors(ToyTask().model.state_dict(), tmp_path / "w" / "w.safetensors")
    train(_cfg(tmp_path, "r", max_steps=3, resume=True, init_from=tmp_path / "w"), task=ToyTask(), log=lambda m: None)
    # (a run started from scratch resumes with or without --init-from: the weights come from the checkpoint)
    # an --init-from run warms up over resume_warmup_steps, before and after a resume
    kw = dict(init_from=tmp_path / "w", resume_warmup_steps=10, warmup_steps=200, resume=True)
    train(_cfg(tmp_path, "i", max_steps=3, **kw), task=ToyTask(), log=lambda m: None)
    train(_cfg(tmp_path, "i", max_steps=6, **kw), task=ToyTask(), log=lambda m: None)
    with pytest.raises(ValueError, match="init_from .* -> None"):  # its model settings came from there
        train(_cfg(tmp_path, "i", max_steps=8, **{**kw, "init_from": None}), task=ToyTask(), log=lambda m: None)
    lrs = [l["lr"] for l in map(json.loads, (tmp_path / "i" / "metrics.jsonl").read_text().splitlines()) if "lr" in l]
    assert lrs == pytest.approx([0.05 * (s + 1) / 10 for s in range(6)])


@pytest.mark.parametrize("kw,match", [
    ({"grad_accum": 0}, "grad_accum=0"), ({"max_steps": 0}, "max_steps=0"), ({"lr": -1e-3}, "lr=-0.001"),
    ({"ema_decay": 1.0}, "ema_decay must be in"), ({"decay_steps": 5}, "add --lr-schedule wsd"),
    ({"lora_rank": 4, "train_only": "weight"}, "--train-only with --lora-rank"),
])
def test_settings_out_of_range_are_refused_before_any_work(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_cfg(tmp_path, "v", **kw), task=ToyTask(), log=lambda m: None)
    assert not (tmp_path / "v").exists()


def test_bad_batch_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="batch size 6 must be divisible by processes x grad_accum = 4"):
        train(_cfg(tmp_path, "bad", batch_size=6, grad_accum=4), task=ToyTask(), log=lambda m: None)


@pytest.mark.parametrize("export", ["best", "last"])
def test_export_best_keeps_the_best_model_and_last_always_writes(tmp_path, export):
    """With lr 0 the held-out loss never improves after the first checkpoint: "best" exports once, "last" each time."""
    task = ToyTask()
    train(_cfg(tmp_path, "e", max_steps=6, lr=0.0, save_every=2, export=export), task=task, log=lambda m: None)
    flags = [json.loads(l)["exported"] for l in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines() if "exported" in l]
    assert flags == ([True, False, False] if export == "best" else [True, True, True])
    assert len(task.exported) == sum(flags)
    with pytest.raises(ValueError, match="export must be 'best' or 'last'"):
        train(_cfg(tmp_path, "x", max_steps=1, export="first"), task=ToyTask(), log=lambda m: None)


def test_a_best_held_out_loss_of_another_measure_starts_afresh_on_resume(tmp_path):
    """A checkpoint records what its best held-out loss measured (`heldout_measure`); resumed under another
    measure (e.g. a decoder now focused on t >= 900), the best starts afresh, said so, and "best" exports again."""

    class Measured(ToyTask):
        def __init__(self, measure):
            super().__init__()
            self.measure = measure

        def heldout_measure(self):
            return self.measure

    train(_cfg(tmp_path, "m", max_steps=4, lr=0.0, save_every=2), task=Measured(None), log=lambda m: None)
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["heldout_measure"] is None and state["best_heldout"] is not None
    logs, same = [], Measured(None)
    train(_cfg(tmp_path, "m", max_steps=6, lr=0.0, save_every=2, resume=True), task=same, log=logs.append)
    assert not same.exported and not any("afresh" in m for m in logs)  # same measure, no better: kept
    other = Measured("t in [900, 1000)")
    train(_cfg(tmp_path, "m", max_steps=8, lr=0.0, save_every=2, resume=True), task=other, log=logs.append)
    assert other.exported and any("best starts afresh" in m for m in logs)
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["heldout_measure"] == "t in [900, 1000)"
