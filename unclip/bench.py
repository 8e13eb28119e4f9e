"""`unclip bench train`: training throughput, model FLOPs per sample and MFU against this
machine's fp32 matmul peak, measured in the same process."""

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, dtype=torch.float32, device="cpu") -> float:
    """Best-of-`repeats` throughput of an n×n matmul, GFLOP/s (the physical limit MFU is measured against)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench_train(stage: str, preset: str, data, batch_size: int, steps: int = 5, warmup: int = 2, options=None,
                channels_last: bool = True) -> dict:
    """Time `steps` optimizer steps of one stage on real batches; count FLOPs of one step exactly."""
    from unclip.stages import make_task
    from unclip.train import TrainConfig, TaskModule, global_batch_indices, sample_generator

    cfg = TrainConfig(stage=stage, preset=preset, data=data, options=options or {})
    torch.manual_seed(0)
    task = make_task(cfg)
    model = TaskModule(task)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = []
    for s in range(warmup + steps):
        idx = global_batch_indices(len(task), batch_size, s, 0)
        batches.append(task.batch(idx, [sample_generator(0, s, i) for i in range(batch_size)], "cpu"))

    def step(b):
        loss, _ = model(b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        loss, _ = model(batches[0])
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_per_sample = counter.get_total_flops() / batch_size
    for b in batches[:warmup]:
        step(b)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    dt = time.perf_counter() - t
    peak = matmul_peak_gflops()
    sps = steps * batch_size / dt
    achieved = sps * flops_per_sample / 1e9
    params = sum(p.numel() for p in task.model.parameters())
    return {"stage": stage, "preset": preset, "params": params, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "samples_per_s": round(sps, 2), "model_gflop_per_sample": round(flops_per_sample / 1e9, 3),
            "achieved_gflops": round(achieved, 1), "matmul_peak_gflops": round(peak, 1), "mfu": round(achieved / peak, 3)}


def preset_table() -> list[dict]:
    """Parameter count of every preset of every stage (models built on the meta device: no memory)."""
    from unclip.presets import load_preset, presets

    rows = []
    for stage in ("clip", "prior", "ar_prior", "decoder", "upsampler"):
        for name in presets(stage):
            with torch.device("meta"):
                model = _build(stage, load_preset(stage, name))
            rows.append({"stage": stage, "preset": name, "params": sum(p.numel() for p in model.parameters())})
    return rows


def _build(stage: str, p: dict):
    if stage == "clip":
        from unclip.clip import CLIPConfig, LockedTextCLIP

        return LockedTextCLIP(CLIPConfig(**p))
    if stage == "prior":
        from unclip.prior import Prior, PriorConfig

        return Prior(PriorConfig(**p))
    if stage == "ar_prior":
        from unclip.ar_prior import ARPrior, ARPriorConfig

        return ARPrior(ARPriorConfig(**p), dims=p.get("max_dims", 64))
    if stage == "decoder":
        from unclip.decoder import Decoder, DecoderConfig

        return Decoder(DecoderConfig(**p))
    from unclip.upsampler import Upsampler, UpsamplerConfig

    return Upsampler(UpsamplerConfig(**p))


def bench_generate(model, samplers=("ddpm", "ddim", "dpm++"), num_images: int = 4, repeats: int = 2,
                   prompt: str = "a grinning cat, 3D style", compare_diffusers: bool = False,
                   precisions=("fp32",)) -> dict:
    """Text -> image wall time per sampler at its default steps (sampling.DEFAULT_STEPS) and per
    precision (`UnCLIPPipeline.set_precision`), in one process: a warm-up call, then the best of
    `repeats` timed calls (the machines here are shared)."""
    import resource

    from unclip.pipeline import UnCLIPPipeline
    from unclip.precision import check_precision
    from unclip.sampling import DEFAULT_STEPS

    for p in precisions:
        check_precision(p)
    pipe = UnCLIPPipeline.from_pretrained(model)
    rows = []
    for precision in precisions:
        pipe.set_precision(precision)
        pipe(prompt, 1, prior_steps=2, decoder_steps=2, upsampler_steps=2, generator=torch.Generator().manual_seed(0))
        for sampler in samplers:
            times = []
            for r in range(repeats):
                t = time.perf_counter()
                pipe(prompt, num_images, sampler=sampler, generator=torch.Generator().manual_seed(r))
                times.append(time.perf_counter() - t)
            best = min(times)
            rows.append({"sampler": sampler, "precision": precision,
                         **{f"{k}_steps": v for k, v in DEFAULT_STEPS[sampler].items()},
                         "num_images": num_images, "seconds": round(best, 3), "seconds_per_image": round(best / num_images, 3),
                         "upsampled": pipe.upsampler is not None})
    pipe.set_precision("fp32")
    base = next((r["seconds"] for r in rows if r["sampler"] == "ddpm" and r["precision"] == "fp32"), None)
    rows_d = bench_vs_diffusers(pipe, num_images, repeats, prompt, also_bf16="bf16" in precisions) if compare_diffusers else None
    for r in rows:
        r["time_vs_ddpm"] = round(r["seconds"] / base, 3) if base else None
    return {"model": str(model), "threads": torch.get_num_threads(), "samplers": rows, "vs_diffusers": rows_d,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


class _PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms from /proc (Linux)."""

    def __enter__(self):
        import threading

        self.base = self.peak = _rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return 0


def bench_vs_diffusers(pipe, num_images: int, repeats: int, prompt: str, steps=(25, 25, 7), also_bf16: bool = False) -> dict:
    """Our pipeline and diffusers' `UnCLIPPipeline` on the same weights (exported to diffusers' layout),
    same prompt, seed, DDPM and steps (diffusers' defaults 25/25/7), both fp32, alternated in one
    process. also_bf16: ours under bf16 autocast as a third contestant (not identical settings: its
    own ratio, with its own image difference)."""
    import tempfile

    import numpy as np

    from unclip.interop import diffusers_pipeline, export_diffusers

    pipe = pipe.with_decoder(pipe.decoder.base())  # same weights on both sides: diffusers has no high-noise expert
    with tempfile.TemporaryDirectory() as tmp:
        export_diffusers(pipe, Path(tmp) / "m")
        theirs = diffusers_pipeline(Path(tmp) / "m")
    p, d, u = steps

    def ours_call(seed):
        return pipe(prompt, num_images, prior_steps=p, decoder_steps=d, upsampler_steps=u, sampler="ddpm", best_of=1,
                    prior_guidance_scale=4.0, decoder_guidance_scale=8.0,  # diffusers' defaults
                    upsampler_strength=1.0, generator=torch.Generator().manual_seed(seed), output_type="np").images

    def their_call(seed):
        return theirs(prompt, num_images_per_prompt=num_images, prior_num_inference_steps=p, decoder_num_inference_steps=d,
                      super_res_num_inference_steps=u, generator=torch.Generator().manual_seed(seed), output_type="np").images

    def ours_bf16(seed):
        pipe.set_precision("bf16")
        try:
            return ours_call(seed)
        finally:
            pipe.set_precision("fp32")

    contestants = [("ours", ours_call), ("theirs", their_call)] + ([("ours_bf16", ours_bf16)] if also_bf16 else [])
    mean_start, pipe.decoder.mean_start = pipe.decoder.mean_start, False  # N(0, I) from t = 999, as diffusers
    try:
        pipe.memory_format(torch.contiguous_format)  # the same layout as diffusers: the same numbers
        reference = their_call(0)  # also the warm-up
        diff = float(np.abs(ours_call(0) - reference).max())
        pipe.memory_format(torch.channels_last)  # then timed as we run
        diff_bf16 = float(np.abs(ours_bf16(0) - reference).max()) if also_bf16 else None
        times, peaks = {name: [] for name, _ in contestants}, {name: 0.0 for name, _ in contestants}
        for r in range(repeats):
            for name, fn in contestants:
                with _PeakRSS() as mem:
                    t = time.perf_counter()
                    fn(r + 1)
                    times[name].append(time.perf_counter() - t)
                peaks[name] = max(peaks[name], mem.mb)
    finally:
        pipe.decoder.mean_start = mean_start
    best = {name: min(v) for name, v in times.items()}
    out = {"steps": list(steps), "sampler": "ddpm", "num_images": num_images, "max_abs_diff": diff,
           "ours_s": round(best["ours"], 3), "diffusers_s": round(best["theirs"], 3),
           "time_ratio": round(best["ours"] / best["theirs"], 3), "ours_peak_mb": peaks["ours"],
           "diffusers_peak_mb": peaks["theirs"]}
    if also_bf16:
        out.update(ours_bf16_s=round(best["ours_bf16"], 3), bf16_time_ratio=round(best["ours_bf16"] / best["theirs"], 3),
                   bf16_max_abs_diff=diff_bf16)
    return out
