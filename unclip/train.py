"""One trainer for every stage: `unclip train STAGE --preset P --data DIR --out DIR [--resume]`.

Stages differ by a *task* (model, batch preparation, loss, held-out loss, export); the loop below
is shared. Built on accelerate (devices, processes, mixed precision). Properties it guarantees:

- Determinism across process counts: the global batch at step s is fixed by (seed, s), and every
  per-sample random draw (timestep, noise, dropout, augmentation) comes from a generator keyed by
  (seed, step, global sample index). So 1 process == N processes at the same global batch.
  Layer dropout inside a model (e.g. the decoder's `--option dropout`) draws from torch's global
  generator, which is reseeded from (seed, step, first sample) before every micro-batch: resume
  stays exact and ranks draw different masks, but a run split differently across processes or
  micro-batches (--grad-accum), or compiled differently (--compile), draws other masks.
- Exact resume: checkpoints hold weights, EMA, optimizer and step (the data position is a
  function of the step); written as safetensors into a fresh directory swapped in atomically.
- With no checkpoint but `--init-from MODEL_DIR`, training starts from those weights with a
  fresh optimizer and a short warm-up (a fresh machine continuing a committed model).
- A non-finite loss skips the step; repeated ones stop the run with a clear message.
"""

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from unclip.paths import default_data_dir, runs_dir
from unclip.precision import native_bf16
from unclip.weights import load_safetensors, save_safetensors


@dataclass
class TrainConfig:
    stage: str
    preset: str = "small"
    data: Path = field(default_factory=default_data_dir)
    out: Path | None = None  # default: ~/.cache/unclip/runs/STAGE-PRESET
    max_steps: int = 1000
    batch_size: int = 64  # global batch per optimizer step (all processes, all micro-batches)
    grad_accum: int = 1
    lr: float = 3e-4
    lr_schedule: str = "constant"  # "constant" | "cosine" (to max_steps) | "wsd", after warm-up
    decay_steps: int = 0  # "wsd" (warm-up, stable, decay): constant, then a cosine to 0 over the last decay_steps
    weight_decay: float = 0.01
    warmup_steps: int = 200
    resume_warmup_steps: int = 50  # warm-up when starting from weights without optimizer state
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    save_minutes: float = 5.0
    save_every: int = 0  # also save every N steps (0: by time only, and at the end)
    export: str = "best"  # run/model at a checkpoint: "best" when the held-out loss improved, "last" always
    previews: bool = True  # run/previews/stepN.png at every checkpoint (the stage's samples; ~25 s for a decoder on a CPU)
    log_every: int = 10
    eval_every: int = 250
    threads: int = 0  # torch CPU threads (0: leave torch's default)
    mixed_precision: str = "auto"  # "no" | "bf16" | "fp16"; auto: bf16 on GPU, fp32 on CPU
    fsdp: bool = False  # shard weights, gradients and optimizer state across processes (FSDP2)
    compile: bool = False  # torch.compile the stage's model (static shapes: text padded to the split's longest caption)
    resume: bool = False
    init_from: Path | None = None
    max_bad_steps: int = 20
    lora_rank: int = 0  # > 0: train LoRA adapters on the --init-from weights (decoder, prior) and export only them
    lora_alpha: float | None = None  # default: the rank
    train_only: str = ""  # comma-separated parameter-name prefixes to train; everything else frozen (default: all)
    options: dict = field(default_factory=dict)  # stage-specific settings (see each task)

    def run_dir(self) -> Path:
        return Path(self.out).expanduser() if self.out else runs_dir() / f"{self.stage}-{self.preset}"


class NonFiniteLoss(RuntimeError):
    pass


def sample_generator(seed: int, step: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator for one sample's random draws at one step (same on any rank)."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 2_147_483_629 + index & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def global_batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Dataset indices of the global batch at `step`: consecutive slices of seeded permutations."""
    out, pos = [], step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset:offset + take].tolist())
        pos += take
    return out


class TaskModule(nn.Module):
    """Wraps a task's model so that its loss is `forward` (what DDP/FSDP hook into)."""

    def __init__(self, task):
        super().__init__()
        self.model = task.model
        self._loss = task.loss

    def forward(self, batch):
        return self._loss(self.model, batch)


class EMA:
    """Exponential moving average of the weights, with warm-up: decay = min(d, (1 + n) / (10 + n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module, state: dict | None = None) -> nn.Module:
        """Load the averaged weights (or `state`, their gathered full form under FSDP) into `model`."""
        target = model.state_dict()
        model.load_state_dict({k: v.to(target[k].dtype) for k, v in (state or self.shadow).items()})
        return model


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flat {"PARAM_INDEX.NAME": full tensor} of the optimizer state (gathered when sharded)."""
    from unclip.sharding import full

    sd = opt.state_dict()
    tensors = {f"{i}.{k}": full(v) for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from unclip.sharding import shard_like

    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        i, k = name.split(".", 1)
        p = params[int(i)]
        state.setdefault(int(i), {})[k] = shard_like(v, p) if v.shape == p.shape else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run: Path, weights: dict, ema_weights: dict, ema_updates: int, optimizer: tuple[dict, dict],
                    step: int, cfg: TrainConfig, extra: dict) -> None:
    """Write run/checkpoint atomically: a fresh directory, then a rename swap."""
    tmp = _fresh_dir(run / "checkpoint")
    save_safetensors(weights, tmp / "model.safetensors")
    save_safetensors(ema_weights, tmp / "ema.safetensors")
    opt_tensors, opt_meta = optimizer
    save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
    state = {"step": step, "ema_updates": ema_updates, "optimizer": opt_meta, "config": _jsonable(asdict(cfg)),
             **extra}
    from unclip.fsutil import write_bytes_atomic

    write_bytes_atomic(tmp / "state.json", json.dumps(state).encode())  # fsynced, as the tensors
    _swap_in(tmp, run / "checkpoint")


def _fresh_dir(final: Path) -> Path:
    """An empty directory beside `final` to write its next version into (then `_swap_in`)."""
    tmp = final.parent / f".{final.name}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename a complete directory over `final`, keeping the previous one as .NAME.old until the new one
    is in place (find_checkpoint falls back to it after a crash between the renames)."""
    old = final.parent / f".{final.name}.old"
    if final.exists():  # an .old left by a crash is the only copy while `final` is missing: keep it then
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def export_atomic(task, model, final: Path) -> None:
    """task.export into a fresh directory, swapped in whole: a crash never leaves a new decoder beside an
    old text_proj."""
    tmp = _fresh_dir(final)
    task.export(model, tmp)
    _swap_in(tmp, final)


def find_checkpoint(run: Path) -> Path | None:
    for cand in (run / "checkpoint", run / ".checkpoint.old"):  # .old survives a crash mid-swap
        if (cand / "state.json").exists():
            return cand
    return None


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def _lr_factor(step: int, cfg: TrainConfig, warmup: int, start: int) -> float:
    w = (step - start + 1) / warmup if warmup and step - start < warmup else 1.0
    if cfg.lr_schedule == "cosine":
        w *= 0.5 * (1 + math.cos(math.pi * min(step / max(cfg.max_steps, 1), 1.0)))
    elif cfg.lr_schedule == "wsd":  # a resumed run can switch to it: the decay starts at max_steps - decay_steps
        done = step - (cfg.max_steps - cfg.decay_steps)
        if done > 0:
            w *= 0.5 * (1 + math.cos(math.pi * min(done / cfg.decay_steps, 1.0)))
    return w


def check_config(cfg: TrainConfig) -> None:
    """Every setting in range, before any work (a zero or negative value would crash late or loop)."""
    positive = {"max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                "save_minutes": cfg.save_minutes, "log_every": cfg.log_every, "max_bad_steps": cfg.max_bad_steps}
    bad = [f"{k}={v}" for k, v in positive.items() if not v > 0]
    bad += [f"{k}={v}" for k, v in {"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "eval_every": cfg.eval_every,
                                    "save_every": cfg.save_every, "grad_clip": cfg.grad_clip}.items() if not v >= 0]
    if bad:
        raise ValueError(f"training settings out of range (steps, sizes and intervals positive; lr, warm-up and "
                         f"clipping not negative): {', '.join(bad)}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    if cfg.decay_steps and cfg.lr_schedule != "wsd":
        raise ValueError(f"decay_steps is the wsd schedule's; add --lr-schedule wsd (the schedule is {cfg.lr_schedule!r})")
    if cfg.lora_rank and cfg.train_only:
        raise ValueError("--train-only with --lora-rank would train base weights that the LoRA export leaves out; use one")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed-precision fp16 needs a GPU (on a CPU accelerate would run it in fp32); use bf16")
    if cfg.export not in ("best", "last"):
        raise ValueError(f"export must be 'best' or 'last', not {cfg.export!r}")
    if cfg.lr_schedule not in ("constant", "cosine", "wsd"):
        raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'wsd', not {cfg.lr_schedule!r}")
    if cfg.lr_schedule == "wsd" and not 0 < cfg.decay_steps <= cfg.max_steps:
        raise ValueError(f"the wsd schedule needs 0 < decay_steps <= max_steps, got decay_steps={cfg.decay_steps} "
                         f"with max_steps={cfg.max_steps}")


def _check_resume(state: dict, cfg: TrainConfig, run: Path) -> None:
    """A resumed run must be the same run: what fixes its data order, model and trainable set is unchanged."""
    rec, now = state.get("config", {}), _jsonable(asdict(cfg))
    changed = [f"{k} {rec[k]!r} -> {now[k]!r}" for k in ("seed", "batch_size", "preset", "lora_rank", "train_only")
               if k in rec and rec[k] != now[k]]
    if rec.get("init_from") is not None:  # (a run started from scratch may be resumed with or without one)
        was, given = (None if v is None else Path(v).resolve() for v in (rec["init_from"], cfg.init_from))
        if was != given:  # the model's own settings (guidance, mean colour, ...) came from there
            changed.append(f"init_from {rec['init_from']!r} -> {None if cfg.init_from is None else str(cfg.init_from)!r}")
    if changed:
        raise ValueError(f"the checkpoint in {run} belongs to another run ({'; '.join(changed)}); resume it with its own "
                         "settings, or use another --out")


def train(cfg: TrainConfig, task=None, log=None) -> dict:
    """Run (or continue) training; returns the final metrics record."""
    from accelerate import Accelerator

    from unclip.stages import make_task

    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # mixed precision is per run (a second train() in one process may differ); the
    # process group (PartialState) stays
    acc = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())  # cpu=True: gloo across CPU processes
    world, rank = acc.num_processes, acc.process_index
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by processes x grad_accum = {world * cfg.grad_accum}")
    run = cfg.run_dir()
    log = log or (lambda msg: acc.print(msg))
    if mp == "bf16" and not native_bf16(acc.device.type):
        log("warning: this CPU has no AMX, so bf16 autocast runs slower than fp32 here (and its compiled kernels "
            "gave non-finite gradients on one such CPU); --mixed-precision no is faster")
    torch.manual_seed(cfg.seed)  # the same initial weights in every process and in a 1-process run
    with acc.main_process_first():  # rank 0 builds the dataset, packs and embeddings; the others then read them
        if task is None:
            from unclip.data.build import ensure_dataset

            ensure_dataset(cfg.data, log)
            task = make_task(cfg)
    model = task.model
    if cfg.train_only:
        prefixes = tuple(p.strip() for p in cfg.train_only.split(",") if p.strip())
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        if not any(p.requires_grad for p in model.parameters()):
            names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise ValueError(f"--train-only {cfg.train_only!r} matches no parameter; top-level names: {', '.join(names)}")
    ckpt = find_checkpoint(run) if cfg.resume else None
    if not cfg.resume and find_checkpoint(run) is not None:  # a forgotten --resume would overwrite the run
        raise ValueError(f"{run} already holds a checkpoint: pass --resume to continue it, or another --out "
                         "(delete the directory to start over)")
    log(f"training {cfg.stage} ({cfg.preset}) on {world} process(es), {acc.device}, mixed precision {mp}"
        + (", FSDP" if cfg.fsdp and world > 1 else ""))
    start, warmup, ema_updates, state = 0, cfg.warmup_steps, 0, {}
    fingerprint = task.fingerprint() if hasattr(task, "fingerprint") else None
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        _check_resume(state, cfg, run)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"the checkpoint in {run} was trained on other inputs ({state.get('fingerprint')}, now "
                             f"{fingerprint}: e.g. a different CLIP stage); use another --out or delete it")
        model.load_state_dict(load_safetensors(ckpt / "model.safetensors"))
        start, ema_updates = state["step"], state["ema_updates"]
        warmup = state.get("warmup", warmup)  # an --init-from run warms up over resume_warmup_steps, resumed or not
        if hasattr(task, "restore_state"):
            task.restore_state(state)
        log(f"resuming {run} at step {start}")
        if cfg.lr_schedule == "wsd" and cfg.max_steps - cfg.decay_steps < start:
            log(f"warning: the wsd decay starts at step {cfg.max_steps - cfg.decay_steps}, before this resume at {start}: "
                "the learning rate jumps to the middle of its decay")
    elif cfg.init_from:
        task.load_weights(Path(cfg.init_from))
        warmup = cfg.resume_warmup_steps
        log(f"starting from the weights in {cfg.init_from} (fresh optimizer, {warmup} warm-up steps)")
    if cfg.compile:
        if not hasattr(task, "static_shapes"):
            raise ValueError(f"--compile is not available for the {cfg.stage} stage: its loss calls the model's methods, "
                             "not the model (prior, decoder, upsampler and ar_prior have it)")
        if cfg.fsdp and world > 1:
            raise ValueError("--compile with --fsdp is not supported yet (untested); drop one of them")
        task.static_shapes()  # one input shape per step: no recompiles, no dynamic-shape graphs
        model.compile(dynamic=False)  # in place: state_dict keys, EMA and exports stay those of the eager model
        log("compiling the model (torch.compile); the first steps include the compile time")
    sharded = cfg.fsdp and world > 1
    wrapped = TaskModule(task)
    if sharded:
        from unclip.sharding import shard

        # after loading full weights, before the optimizer sees the parameters; the root is the loss
        # module, so a stage's own parameters are gathered for everything its loss does
        shard(wrapped)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name or "embedding" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    if ckpt is not None:
        _load_optimizer(opt, load_safetensors(ckpt / "optimizer.safetensors"), state["optimizer"])
    ema = EMA(model, cfg.ema_decay)
    if ckpt is not None:
        from unclip.sharding import shard_like

        like = model.state_dict()
        ema.shadow = {k: shard_like(v.float(), like[k]).float() for k, v in load_safetensors(ckpt / "ema.safetensors").items()}
        ema.updates = ema_updates
    if sharded:  # FSDP already synchronises gradients; accelerate would add DDP on top
        opt = acc.prepare(opt)
    else:
        wrapped, opt = acc.prepare(wrapped, opt)
        ema.shadow = {k: v.to(acc.device) for k, v in ema.shadow.items()}  # beside the weights prepare moved
    if acc.scaler is not None and "grad_scaler" in state:  # fp16: resume at the loss scale it had reached
        acc.scaler.load_state_dict(state["grad_scaler"])
    device = acc.device
    n = len(task)
    local = cfg.batch_size // world
    micro = local // cfg.grad_accum
    run.mkdir(parents=True, exist_ok=True)
    metrics_path = run / "metrics.jsonl"
    measure = task.heldout_measure() if hasattr(task, "heldout_measure") else None  # None: the stage's usual one
    best = state.get("best_heldout")
    if best is not None and state.get("heldout_measure") != measure:
        log(f"the held-out loss is now measured over {measure or 'every t'} (the checkpoint's best, {best:.4g}, "
            f"over {state.get('heldout_measure') or 'every t'}): the best starts afresh")
        best = None
    stop = {"flag": False}
    # every process: launchers send SIGTERM to all ranks, and the flag is agreed on across them
    old_handler = signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__("flag", True))

    from unclip.sharding import full_state

    def evaluate(ema_full: dict) -> float:
        return float(task.heldout_loss(ema.copy_to(task.eval_model(), ema_full)))

    def checkpoint(step: int) -> None:
        nonlocal best
        ema_full = full_state(ema.shadow)  # collectives under FSDP: every process takes part
        weights = full_state(acc.unwrap_model(wrapped).model.state_dict())
        optimizer = _optimizer_tensors(opt)
        h = evaluate(ema_full)
        for name, tensors in (("weights", weights), ("EMA", ema_full)):  # on every process: full, identical tensors
            if not all(torch.isfinite(v).all() for v in tensors.values() if v.dtype.is_floating_point):
                raise NonFiniteLoss(f"non-finite {name} at step {step}: not saved over the last good checkpoint "
                                    f"in {run}; lower --lr and resume from it")
        if acc.is_main_process:
            improved = best is None or h < best
            best = h if improved else best
            if improved or cfg.export == "last":  # before the checkpoint that records this best
                export_atomic(task, ema.copy_to(task.eval_model(), ema_full), run / "model")
            save_checkpoint(run, weights, ema_full, ema.updates, optimizer, step, cfg,
                            {"best_heldout": best, "heldout": h, "heldout_measure": measure,
                             "fingerprint": fingerprint, "warmup": warmup,
                             **({"grad_scaler": acc.scaler.state_dict()} if acc.scaler is not None else {}),
                             **(task.checkpoint_state() if hasattr(task, "checkpoint_state") else {})})
            if cfg.previews and hasattr(task, "preview"):  # a picture of where training stands, at every checkpoint
                task.preview(ema.copy_to(task.eval_model(), ema_full), run / "previews" / f"step{step:07d}.png")
            _append(metrics_path, {"step": step, "heldout_loss": h, "best_heldout": best,
                                   "exported": improved or cfg.export == "last"})
        acc.wait_for_everyone()

    bad, last_save, t_log, samples_log = 0, time.time(), time.time(), 0
    record = {}
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc=f"train {cfg.stage}",
               disable=not acc.is_local_main_process)
    step = start
    for step in bar:
        idx = global_batch_indices(n, cfg.batch_size, step, cfg.seed)
        mine = range(rank * local, (rank + 1) * local)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, cfg, warmup, start if ckpt is None else 0)
        logs_sum: dict[str, float] = {}
        loss_total = 0.0
        for m0 in range(0, local, micro):
            pos = list(mine[m0:m0 + micro])
            gens = [sample_generator(cfg.seed, step, p) for p in pos]
            batch = task.batch([idx[p] for p in pos], gens, device)
            g = sample_generator(cfg.seed, step, pos[0])  # layer dropout's masks: a seed drawn from, not equal to, the
            torch.manual_seed(int(torch.randint(2**63 - 1, (), generator=g)))  # sample's stream
            ctx = acc.no_sync(wrapped) if m0 + micro < local else _null()
            with ctx, acc.autocast():
                loss, logs = wrapped(batch)
            scaled = loss * (len(pos) / local)
            acc.backward(scaled)
            loss_total += float(scaled.detach())
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * len(pos) / local
        finite = torch.tensor([math.isfinite(loss_total)], device=device, dtype=torch.float32)
        finite = acc.reduce(finite, reduction="mean") if world > 1 else finite
        grad_norm, what = None, "loss"
        if finite.item() == 1.0:
            # --grad-clip 0: the norm still checks the gradients for NaN/inf (clipping at inf scales by 1)
            grad_norm = acc.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip or math.inf)
            if grad_norm is not None and hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            what = "gradient"  # gradients are reduced across processes already: every rank sees the same norm
        done = step + 1
        # (under fp16 the grad scaler skips an inf step itself, and must see it to lower its scale)
        bad_grad = grad_norm is not None and not math.isfinite(float(grad_norm)) and acc.scaler is None
        if finite.item() < 1.0 or bad_grad:
            opt.zero_grad(set_to_none=True)  # the weights and the EMA stay as they were
            bad += 1
            _append(metrics_path, {"step": step, "skipped": f"non-finite {what}"}) if acc.is_main_process else None
            log(f"step {step}: non-finite {what}, skipped ({bad} in a row)")
            if bad >= cfg.max_bad_steps:
                raise NonFiniteLoss(f"{bad} non-finite losses or gradients in a row at step {step}; stopping. Lower "
                                    f"--lr, check the data, or resume from the last checkpoint in {run}")
            if _broadcast_flag(acc, stop["flag"]) or done == cfg.max_steps:  # still saved when stopping or at the end
                checkpoint(done)
                if done < cfg.max_steps:
                    log(f"stopped by SIGTERM at step {done}; checkpoint saved")
                    break
            continue
        bad = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(acc.unwrap_model(wrapped).model)
        samples_log += cfg.batch_size
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            if world > 1:  # log the global batch's loss, not this rank's share
                vals = acc.reduce(torch.tensor([loss_total, *logs_sum.values()], device=device), reduction="mean")
                loss_total, logs_sum = float(vals[0]), dict(zip(logs_sum, vals[1:].tolist()))
        if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.max_steps):
            dt = time.time() - t_log
            record = {"step": done, "loss": loss_total, "lr": opt.param_groups[0]["lr"],
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "samples_per_s": samples_log / max(dt, 1e-9), **logs_sum, "time": time.time()}
            _append(metrics_path, record)
            bar.set_postfix(loss=f"{loss_total:.4f}")
            t_log, samples_log = time.time(), 0
        stop_now = _broadcast_flag(acc, stop["flag"])
        due = (time.time() - last_save > cfg.save_minutes * 60) or (cfg.save_every and done % cfg.save_every == 0)
        if _broadcast_flag(acc, bool(due)) or stop_now or done == cfg.max_steps:
            checkpoint(done)
            last_save = time.time()
        elif cfg.eval_every and done % cfg.eval_every == 0:
            ema_full = full_state(ema.shadow)
            if acc.is_main_process:
                _append(metrics_path, {"step": done, "heldout_loss": evaluate(ema_full)})
        if stop_now:
            log(f"stopped by SIGTERM at step {done}; checkpoint saved")
            break
    bar.close()
    if world > 1 and not sharded:  # (sharded weights differ per process by design)
        in_sync = _ranks_in_sync(acc, acc.unwrap_model(wrapped).model)
        if acc.is_main_process:
            _append(metrics_path, {"step": step + 1, "ranks_in_sync": in_sync})
        if not in_sync:
            raise RuntimeError("the processes ended with different weights; please report this as a bug")
    if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    acc.wait_for_everyone()
    acc.end_training()
    return {"step": step + 1 if cfg.max_steps > start else start, "best_heldout": best, **record}


def _ranks_in_sync(acc, model: nn.Module) -> bool:
    """True when every process holds bit-identical weights (compares per-tensor checksums)."""
    sums = torch.stack([p.detach().double().sum() for p in model.state_dict().values()]).to(acc.device)
    every = acc.gather(sums[None])  # (world, n_tensors)
    return bool((every == every[0]).all())


def _broadcast_flag(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
