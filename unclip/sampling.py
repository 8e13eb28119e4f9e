"""Samplers for every stage: DDPM, DDIM (with η) and DPM-Solver++ (multistep), from diffusers.

A stage supplies `denoise(x, t) -> model output` in its scheduler's prediction space (x0 for the
prior, ε for the decoder and upsamplers); `sample` runs the loop. Classifier-free guidance is a
wrapper around `denoise` (`guided`), so every sampler gets it for free.
"""

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

_step_hook = contextvars.ContextVar("unclip_step_hook", default=None)


@contextmanager
def step_hook(fn):
    """Call fn(stage, step, steps) after every sampling step run inside the block, in this thread
    (the server's progress and cancellation: fn may raise to stop the run)."""
    token = _step_hook.set(fn)
    try:
        yield
    finally:
        _step_hook.reset(token)


def report_step(stage: str | None, step: int, steps: int) -> None:
    fn = _step_hook.get()
    if fn is not None:
        fn(stage, step, steps)

SAMPLERS = ("ddpm", "ddim", "dpm++")

# Steps per stage when a call names none. DDPM: Karlo's (25 prior, 50 decoder, 6 + 1 upsampler);
# DDIM: diffusers' UnCLIPPipeline 25/25/7; DPM-Solver++: at most a quarter of DDPM's.
DEFAULT_STEPS = {
    "ddpm": {"prior": 25, "decoder": 50, "upsampler": 7},
    "ddim": {"prior": 25, "decoder": 25, "upsampler": 7},
    "dpm++": {"prior": 6, "decoder": 12, "upsampler": 2},
}


def make_scheduler(sampler: str, prediction_type: str = "epsilon", clip_range: float | None = 1.0,
                   learned_variance: bool = False, spacing: str = "trailing"):
    """A diffusers scheduler on the cosine schedule the stages were trained with.

    ddpm: `UnCLIPScheduler` (Karlo's; learned-range variance for the decoder, fixed-small otherwise).
    ddim: `DDIMScheduler`, trailing timesteps ending at ᾱ = 1 (spacing="leading" for inversion: its
    last point is t = T − T/steps, where √ᾱ ≈ 0.04, not t = T − 1, where √ᾱ ≈ 5e-5 and the first
    step back multiplies any ε mismatch by 2e4: an inverted x_T would not decode to its image).
    dpm++: `DPMSolverMultistepScheduler`, second order, trailing timesteps. Its first step starts
    where ᾱ ≈ 2e-9, so an ε-predicted x0 carries the ε error times 1/√ᾱ ≈ 2e4: `sample` clips x0
    to ±clip_range as DDIM and DDPM do (diffusers' own thresholding rescales instead of clipping
    above range 1, and fails on (B, D) samples such as the prior's).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UnCLIPScheduler

    clip = clip_range is not None
    if sampler == "ddpm":
        return UnCLIPScheduler(variance_type="learned_range" if learned_variance else "fixed_small_log",
                               prediction_type=prediction_type, clip_sample=clip, clip_sample_range=clip_range or 1.0)
    if sampler == "ddim":
        return DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=clip,
                             clip_sample_range=clip_range or 1.0, set_alpha_to_one=True, timestep_spacing=spacing)
    if sampler == "dpm++":
        sched = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                                           algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
                                           lower_order_final=True)
        sched.x0_clip_range = clip_range  # applied by `sample`
        return sched
    raise ValueError(f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")


def _ddim_step(scheduler, out, t, x, eta, generator, last: bool) -> torch.Tensor:
    """DDIMScheduler.step, whose last step lands on ᾱ = 1 for every step count: diffusers steps to
    t - T // steps, which for counts that do not divide T (7, 24, 60, ...) ends at t = 0 or above
    (ᾱ < 1: a little noise left in the image, 0.03 at most against a perfect ε, measured); one
    inference step as far as the scheduler knows sends the last point below 0, to its final ᾱ."""
    n = scheduler.num_inference_steps
    if last:
        scheduler.num_inference_steps = 1  # prev = t - T < 0: the final alpha (set_alpha_to_one)
    try:
        return scheduler.step(out, t, x, eta=eta, generator=generator).prev_sample
    finally:
        scheduler.num_inference_steps = n


def _clip_x0(out, x, alpha_bar, prediction_type: str, r: float):
    """The model output with its implied x0 clipped to ±r, in the same prediction space."""
    if prediction_type == "sample":
        return out.clamp(-r, r)
    a, sigma = alpha_bar.sqrt().to(x), (1 - alpha_bar).sqrt().to(x)
    x0 = predicted_x0(out, x, alpha_bar, prediction_type).clamp(-r, r)
    eps = (x - a * x0) / sigma
    return a * eps - sigma * x0 if prediction_type == "v_prediction" else eps


def predicted_x0(out: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean sample a model output implies at x_t (its first x.shape[1] channels; ᾱ_t = alpha_bar)."""
    out = out[:, :x.shape[1]]
    if prediction_type == "sample":
        return out
    a, sigma = alpha_bar.sqrt().to(x), (1 - alpha_bar).sqrt().to(x)
    if prediction_type == "v_prediction":
        return a * x - sigma * out
    return (x - sigma * out) / a


@dataclass
class Prune:
    """Go on with some rows of the batch only, partway through sampling: after the `after`-th step's
    model output, `choose(x0)` gets the clean images it implies for every row (N, C, H, W; clipped to
    ±1) and returns the rows to keep (a LongTensor); `denoiser(rows)` is the denoiser for those rows
    (its conditioning cut to them). The rows dropped cost no more network passes."""
    after: int
    choose: Callable[[torch.Tensor], torch.Tensor]
    denoiser: Callable[[torch.Tensor], Callable]


def _keep_rows(scheduler, rows: torch.Tensor, n: int) -> None:
    """Cut a multistep scheduler's stored model outputs (DPM-Solver++'s history) of n rows to `rows`."""
    history = getattr(scheduler, "model_outputs", None)
    if history is not None:
        scheduler.model_outputs = [m[rows] if torch.is_tensor(m) and len(m) == n else m for m in history]


def guided(denoise_pair, guidance_scale: float, split: int | None = None, interval: tuple[int, int] | None = None):
    """CFG: `denoise_pair(x2, t)` returns outputs for [uncond; cond] of a doubled batch.

    out = uncond + s (cond - uncond) on the first `split` channels (ε; the rest, a learned
    variance, is taken from the conditional half, as Karlo does). Scale 1 skips the uncond pass.
    `interval` (t_lo, t_hi): guide only at timesteps t_lo <= t <= t_hi and take the conditional output
    alone elsewhere (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval": guidance at
    the highest noise levels costs diversity, at the lowest it changes little), which also skips
    the unconditional pass there.
    """
    if interval is not None:
        check_guidance_interval(interval)

    def denoise(x, t):
        if guidance_scale == 1.0 or (interval is not None and not interval[0] <= int(t) <= interval[1]):
            return denoise_pair(x, t, cond_only=True)
        out = denoise_pair(torch.cat([x, x]), t)
        uncond, cond = out.chunk(2)
        k = split or out.shape[1]
        mixed = uncond[:, :k] + guidance_scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([mixed, cond[:, k:]], 1)

    return denoise


def check_guidance_interval(interval, what: str = "a guidance interval") -> None:
    """Two training timesteps 0 <= t_lo <= t_hi <= 999; one clear error naming `what` otherwise."""
    ok = (isinstance(interval, (tuple, list)) and len(interval) == 2
          and all(isinstance(v, (int, float)) and float(v) == int(v) for v in interval))
    if not ok or not 0 <= int(interval[0]) <= int(interval[1]) <= 999:
        raise ValueError(f"{what} is two timesteps t_lo <= t_hi in 0..999, got {interval!r}")


def check_steps(sampler: str, **steps: int) -> None:
    """Each named step count is at least 1, and at least 2 for DDPM (its UnCLIPScheduler spaces the
    steps from t = 999 to t = 0, which one step cannot do); one clear error otherwise."""
    least = 2 if sampler == "ddpm" else 1
    for name, n in steps.items():
        if n < least:
            raise ValueError(f"{name} must be at least {least}{' with the ddpm sampler' if least == 2 else ''}, got {n}")


def set_timesteps(scheduler, steps: int) -> torch.Tensor:
    """scheduler.set_timesteps(steps), with diffusers' "trailing" spacing mended: its
    np.arange(T, 0, -T/steps) gives steps + 1 points, the last t = -1 (ᾱ wraps to ᾱ_999 ≈ 2e-9 and the
    image is destroyed), for 62 step counts in 1..1000 (61, 103, 121, ...). Those get the intended
    points, round(T - i·T/steps) - 1 for i < steps."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler.set_timesteps(steps)
    ts = scheduler.timesteps
    if len(ts) != steps or int(ts.min()) < 0:
        import numpy as np

        T = scheduler.config.num_train_timesteps
        fixed = (np.round(T - np.arange(steps) * T / steps) - 1).astype(np.int64)  # descending, 0 <= t <= T - 1
        if isinstance(scheduler, DPMSolverMultistepScheduler):
            scheduler.set_timesteps(timesteps=fixed.tolist())
        else:  # DDIM steps from t to t - T // steps: the last point reaches ᾱ = 1 as for other counts
            scheduler.timesteps = torch.from_numpy(fixed)
    return scheduler.timesteps


def truncated_timesteps(scheduler, steps: int, strength: float = 1.0) -> torch.Tensor:
    """set_timesteps(steps), then keep the last round(steps·strength) of them (img2img-style: a run that
    starts from a noised image instead of pure noise), telling the scheduler where it begins."""
    from diffusers import UnCLIPScheduler

    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    check_steps("ddpm" if isinstance(scheduler, UnCLIPScheduler) else "", steps=steps)
    set_timesteps(scheduler, steps)
    start = steps - max(1, min(steps, round(steps * strength)))
    if start and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


def sample(denoise, x: torch.Tensor, scheduler, steps: int, generator: torch.Generator | None = None,
           eta: float = 0.0, desc: str | None = None, keep_channels: int | None = None,
           strength: float = 1.0, prune: Prune | None = None) -> torch.Tensor:
    """Run `steps` steps from x_T (strength < 1: only the last steps·strength of them, from an x already
    noised to the first of those; see truncated_timesteps). keep_channels: drop extra output channels
    (a learned variance) for schedulers that cannot use them. `prune`: keep only some rows from a step
    on (see Prune); the result then has those rows, in the order `choose` gave them."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UnCLIPScheduler

    timesteps = truncated_timesteps(scheduler, steps, strength)
    if prune is not None and not 1 <= prune.after <= len(timesteps):
        raise ValueError(f"cannot choose rows after step {prune.after}: this sampling runs {len(timesteps)} steps")
    learned = isinstance(scheduler, UnCLIPScheduler) and scheduler.config.variance_type == "learned_range"
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=desc is None, leave=False)):
        out = denoise(x, t.to(x.device))
        if prune is not None and i + 1 == prune.after:
            x0 = predicted_x0(out, x, scheduler.alphas_cumprod[t], scheduler.config.prediction_type).clamp(-1, 1)
            rows = prune.choose(x0)
            _keep_rows(scheduler, rows, len(x))
            x, out, denoise = x[rows], out[rows], prune.denoiser(rows)
        if keep_channels and not learned:
            out = out[:, :keep_channels]
        if isinstance(scheduler, DPMSolverMultistepScheduler) and getattr(scheduler, "x0_clip_range", None):
            out = _clip_x0(out, x, scheduler.alphas_cumprod[t], scheduler.config.prediction_type, scheduler.x0_clip_range)
        if isinstance(scheduler, DDIMScheduler):
            x = _ddim_step(scheduler, out, t, x, eta, generator, last=i + 1 == len(timesteps))
        elif isinstance(scheduler, UnCLIPScheduler):
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
            x = scheduler.step(out, t, x, prev_timestep=prev, generator=generator).prev_sample
        else:
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        report_step(desc, i + 1, len(timesteps))
    return x
