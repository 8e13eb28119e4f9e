"""`unclip finetune SRC --out DIR`: import, embed and fine-tune a model on your images, in one command.

1. `data import` of SRC into DIR/data (validated, resumable);
2. the prior and the decoder fine-tuned from the base model (its architecture and its CLIP stage),
   and the decoder's high-noise expert when the base has one (it sets the layout, and so much of
   the style, in the first steps; each network trains on the timesteps it serves), either fully or as
   LoRA adapters (`lora_rank`); the time is measured on the first steps and printed before the rest
   runs; every run resumes when the command is repeated;
3. DIR/model: the base model with the fine-tuned stages (or DIR/lora/*.safetensors for adapters),
   and DIR/before_after.png: the base model's images (top row) and the fine-tuned model's (bottom)
   for captions of held-out images of SRC, from the same seeds.
"""

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class FinetuneConfig:
    src: Path
    out: Path
    base: Path | None = None  # default: the shipped model
    steps: int = 200  # per stage (prior, decoder, expert): ~25 min in all on 2 CPU cores without AMX
    batch_size: int = 16
    lr: float = 2e-4
    lora_rank: int = 0  # 0: full fine-tune of both stages
    prior: bool = True
    default_caption: str | None = None
    style: str | None = None
    threads: int = 0
    mixed_precision: str = "auto"  # as `unclip train`: auto is fp32 on a CPU; bf16 ~1.7x faster on one with AMX
    seed: int = 0
    grid_prompts: int = 4
    style_prompts: int = 16  # held-out captions of SRC for the style retrieval measure (0: skip it)
    base_data: Path | None = None  # the base model's dataset, for the other styles (default: the default data dir)


def finetune(cfg: FinetuneConfig, log=print) -> dict:
    from unclip.data.importer import ImportConfig, import_images
    from unclip.models import default_model_dir
    from unclip.train import TrainConfig, train

    base = Path(cfg.base or default_model_dir() or "")
    if not (base / "decoder_config.json").exists():
        raise FileNotFoundError(f"no base model with a decoder at {base}; pass --base MODEL_DIR")
    if cfg.steps < 4:
        raise ValueError(f"--steps must be at least 4 (the first 4 measure the time per step), got {cfg.steps}")
    out = Path(cfg.out).expanduser()
    check_base(out, base, log)
    data = out / "data"
    from unclip.data.importer import _input_id

    icfg = ImportConfig(src=cfg.src, out=data, default_caption=cfg.default_caption, style=cfg.style, seed=cfg.seed)
    check_data(out, _input_id(Path(cfg.src).expanduser(), icfg))  # before the import replaces OUT/data
    m = import_images(icfg, log=log)
    log(f"{m['counts']['images']} images, {m['counts']['captions']} captions in {data}")
    expert = json.loads((base / "decoder_config.json").read_text()).get("expert_from")
    stages = (["prior"] if cfg.prior else []) + ["decoder"] + (["decoder_expert"] if expert else [])
    runs, report = {}, {"images": m["counts"]["images"], "stages": {}}
    for stage in stages:
        run = out / "runs" / stage
        init, options = stage_start(base, stage, expert)
        tc = TrainConfig(stage=stage.removesuffix("_expert"), data=data, out=run, max_steps=2,
                         batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=20, resume=True, init_from=init,
                         threads=cfg.threads, seed=cfg.seed, mixed_precision=cfg.mixed_precision, options=options,
                         eval_every=max(cfg.steps // 3, 1), save_minutes=5.0, lora_rank=cfg.lora_rank, export="last",
                         previews=False)  # (before_after.png shows the result; a decoder's preview costs ~25 s)
        train(tc, log=lambda *_: None)  # the first steps; the data's embeddings are computed here
        tc.max_steps = min(4, cfg.steps)
        timed = train(tc, log=lambda *_: None)  # two more, timed by the trainer (not its set-up, checkpoint, preview)
        if "samples_per_s" in timed:
            per_step = cfg.batch_size / timed["samples_per_s"]
            log(f"{stage}: about {per_step * cfg.steps / 60:.1f} min for {cfg.steps} steps ({per_step:.2f} s/step "
                "measured)")
        else:
            log(f"{stage}: resuming its run at step {timed['step']} of {cfg.steps}")
        tc.max_steps = cfg.steps
        t = time.time()
        result = train(tc)
        report["stages"][stage] = {"steps": cfg.steps, "minutes": round((time.time() - t) / 60, 2), **result}
        runs[stage] = run / "model"
    model_dir = _assemble(base, runs, out, cfg.lora_rank, expert)
    report["model"] = str(model_dir)
    report["before_after"] = str(before_after(base, model_dir, data, out / "before_after.png", cfg))
    if cfg.style_prompts:
        report["style_retrieval"] = style_report(base, model_dir, data, cfg, log)
    return report


def stage_start(base: Path, stage: str, expert_from: int | None) -> tuple[Path, dict]:
    """Where a stage's run starts and its --options. The expert is a decoder of its own
    (MODEL/decoder_expert, with its settings; the base's CLIP stage embeds). With an expert, each network
    trains on the timesteps it draws at sampling only: the decoder on t < expert_from, the expert on
    t >= expert_from (its base run also trained below, where v_ramp blends; a fine-tune's few steps go
    where they are used)."""
    if stage == "decoder_expert":
        return base / stage, {"clip": str(base), "focus_from": expert_from, "focus_to": 1000, "focus_share": 1.0}
    if stage == "decoder" and expert_from:
        return base, {"focus_from": 0, "focus_to": expert_from, "focus_share": 1.0}
    return base, {}


def _assemble(base: Path, runs: dict, out: Path, lora: int, expert_from: int | None) -> Path:
    from unclip.models import assemble, attach_expert

    if lora:
        d = out / "lora"
        d.mkdir(parents=True, exist_ok=True)
        for stage, run in runs.items():
            shutil.copy2(run / "lora.safetensors", d / f"{stage}.safetensors")
        return d
    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(base, model, ignore=shutil.ignore_patterns("MODEL_CARD.md"))
    expert = runs.get("decoder_expert")
    # (a decoder run exports one network: the base's expert goes, the fine-tuned one comes)
    assemble(model, **{stage: run for stage, run in runs.items() if stage != "decoder_expert"})
    if expert is not None:
        attach_expert(model, expert, expert_from)
    return model


# What a fine-tune starts from: the CLIP stage (it embeds the data), the prior, the decoder and their configs
START_FILES = ("clip.safetensors", "clip_config.json", "prior", "prior_config.json", "decoder", "text_proj",
               "decoder_config.json", "decoder_expert")


def weights_id(model_dir: Path, files: tuple = START_FILES) -> str:
    """A hash of the files a fine-tune starts from (START_FILES: names and contents); the upsampler, the
    AR prior, a PCA or adapters written into the model directory later do not change it."""
    import hashlib

    from unclip.fsutil import file_hash

    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in files:
        path = model_dir / name
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(model_dir)} {file_hash(f)}\n".encode())
    return h.hexdigest()[:16]


def check_base(out: Path, base: Path, log=print) -> None:
    """OUT/base.json names the weights OUT's runs started from; repeating the command resumes them only
    from the same base (a changed base, e.g. a newer shipped model, would otherwise resume silently)."""
    from unclip.fsutil import write_bytes_atomic

    record, now, was = out / "base.json", {"base": str(base), "weights": weights_id(base)}, {}
    if record.exists():
        was = json.loads(record.read_text())
        changed = was["weights"] != now["weights"]  # (the id without the expert is hashed only then)
        if changed and was["weights"] == weights_id(base, START_FILES[:-1]):  # recorded before experts were tuned
            log(f"{out}'s runs started from these weights; the base's high-noise expert is now fine-tuned too")
        elif changed and (out / "runs").exists():
            raise ValueError(f"{out} holds a fine-tune of other base weights ({was['base']}, {was['weights']}; now "
                             f"{now['weights']}): pass a new --out, or delete {out / 'runs'} to start over")
    elif (out / "runs").exists():
        log(f"warning: {out / 'runs'} has no record of the base it started from (an older fine-tune); resuming it "
            f"from {base} as it is")
    write_bytes_atomic(record, json.dumps({**was, **now}).encode())  # (keeps the data record, check_data)


def check_data(out: Path, build_id: str) -> None:
    """OUT/base.json also names the images the runs trained on: repeating the command after SRC changed
    (images added, recaptioned, another folder) would resume finished runs that never saw the change."""
    from unclip.fsutil import write_bytes_atomic

    record = out / "base.json"
    now = json.loads(record.read_text()) if record.exists() else {}
    if now.get("data") not in (None, build_id) and (out / "runs").exists():
        raise ValueError(f"the images in SRC changed since {out / 'runs'} trained on them (import {now['data']}, now "
                         f"{build_id}): pass a new --out, or delete {out / 'runs'} to train on them")
    write_bytes_atomic(record, json.dumps({**now, "data": build_id}).encode())


def load_finetuned(base: Path, model_dir: Path):
    """The fine-tuned pipeline: a model directory, or the base with the adapters of a lora/ directory."""
    from unclip.pipeline import UnCLIPPipeline

    if (model_dir / "decoder_config.json").exists():
        return UnCLIPPipeline.from_pretrained(model_dir)
    pipe = UnCLIPPipeline.from_pretrained(base)
    for f in sorted(model_dir.glob("*.safetensors")):
        pipe.load_lora(f)
    return pipe


def before_after(base: Path, model_dir: Path, data: Path, path: Path, cfg: FinetuneConfig) -> Path:
    from unclip.embed import image_pack
    from unclip.images import grid, save_png
    from unclip.pipeline import UnCLIPPipeline

    _, idx = image_pack(data, "heldout_images")
    if not idx["captions"]:
        _, idx = image_pack(data, "train")
    first = idx["caption_offsets"][:-1]
    prompts = [idx["captions"][i] for i in first[: cfg.grid_prompts]]
    rows = []
    for pipe in (UnCLIPPipeline.from_pretrained(base), load_finetuned(base, model_dir)):
        rows += pipe(prompts, 1, generator=torch.Generator().manual_seed(cfg.seed), decoder_steps=25,
                     prior_steps=25).images
    save_png(grid(rows, cols=len(prompts)), path, {"task": "finetune_before_after", "prompts": prompts,
                                                   "base": str(base), "finetuned": str(model_dir), "seed": cfg.seed})
    return path


class StyleProbe:
    """A linear style classifier on the CLIP stage's unit z_i: multinomial logistic regression fitted
    on the train splits of the datasets given, classes weighted by inverse frequency (a small new style
    counts as much as a large one)."""

    def __init__(self, clip, clip_dir: Path, datasets: list[Path], steps: int = 300, lr: float = 0.05):
        from unclip.embed import clip_embeddings, image_pack

        zs, styles = [], []
        for data in datasets:
            zs.append(torch.from_numpy(np.asarray(clip_embeddings(data, "train", clip, clip_dir)["image_embed"], np.float32)))
            styles += image_pack(data, "train")[1]["styles"]
        self.names = sorted(set(styles))
        z = F.normalize(torch.cat(zs), dim=-1)  # (N, D)
        y = torch.tensor([self.names.index(s) for s in styles])  # (N,)
        weight = len(y) / (len(self.names) * torch.bincount(y, minlength=len(self.names)).float())
        self.linear = torch.nn.Linear(z.shape[1], len(self.names))
        torch.nn.init.zeros_(self.linear.weight), torch.nn.init.zeros_(self.linear.bias)
        opt = torch.optim.Adam(self.linear.parameters(), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):  # full batch: deterministic
                opt.zero_grad()
                F.cross_entropy(self.linear(z / 0.1), y, weight=weight).backward()
                opt.step()
        self.linear.requires_grad_(False)

    def logits(self, z_i: torch.Tensor) -> torch.Tensor:
        """(B, styles) for z_i (B, D); softmax gives each style's probability."""
        return self.linear(F.normalize(z_i.float(), dim=-1) / 0.1)

    def __call__(self, z_i: torch.Tensor) -> list[str]:
        """The predicted style of each z_i (B, D)."""
        return [self.names[i] for i in self.logits(z_i).argmax(-1).tolist()]


@torch.no_grad()
def style_embeds(pipe, prompts: list[str], real_z: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """The CLIP stage's z_i (n, D) of what `pipe` makes of `prompts` (64 px, seeded): the prior's samples,
    the generated images, and the images decoded from `real_z` (n, D), the real images' own z_i."""
    r = pipe(prompts, 1, generator=torch.Generator().manual_seed(seed), upsample=False, output_type="pt")
    own = pipe.from_embeds(real_z, prompts, generator=torch.Generator().manual_seed(seed), upsample=False,
                           output_type="pt").images
    return r.image_embeds, pipe.clip.encode_image(r.images * 2 - 1), pipe.clip.encode_image(own * 2 - 1)


@torch.no_grad()
def style_report(base: Path, model_dir: Path, data: Path, cfg: FinetuneConfig, log=print) -> dict:
    """Style retrieval accuracy with the base model's CLIP stage: the share of images, generated for
    held-out captions of SRC (which name its style), that a linear probe on z_i (`StyleProbe`, fitted on
    every style of the base dataset and SRC's training images) assigns to SRC's style; for the base
    model, the fine-tuned one, and the real held-out images of SRC (the ceiling). `*_prior`: the same
    for the z_i the prior sampled (what the decoder was asked to draw); `*_own`: for images the decoder
    drew from the held-out images' own z_i (a perfect prior: what the decoder alone can render).
    Skipped, with the reason, when the base dataset is absent."""
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack
    from unclip.paths import default_data_dir
    from unclip.pipeline import UnCLIPPipeline

    base_data = Path(cfg.base_data or default_data_dir()).expanduser()
    if not (base_data / "manifest.json").exists():
        log(f"style retrieval skipped: no base dataset at {base_data} (`unclip data build`)")
        return {"skipped": f"no base dataset at {base_data}"}
    style = json.loads((data / "manifest.json").read_text())["style"]
    if style in set(image_pack(base_data, "train")[1]["styles"]):
        log(f"style retrieval skipped: the base dataset already has a style named {style!r} (give --style NAME)")
        return {"skipped": f"the base dataset already has a style named {style!r}"}
    before = UnCLIPPipeline.from_pretrained(base)
    probe = StyleProbe(before.clip, base, [base_data, data])
    images, idx = image_pack(data, "heldout_images")
    first = idx["caption_offsets"][:-1][: cfg.style_prompts]
    prompts = [idx["captions"][i] for i in first]
    real = uint8_to_tensor(np.asarray(images[: len(prompts)]))  # (n, 3, H, W) in [-1, 1]
    out = {"style": style, "styles": len(probe.names), "prompts": len(prompts)}
    runs = {"real": (None, before.clip.encode_image(real), None)}  # name: z_i of (the prior, its images, own-z_i images)
    for name, pipe in (("before", before), ("after", load_finetuned(base, model_dir))):
        runs[name] = style_embeds(pipe, prompts, runs["real"][1], cfg.seed)
    for name, (prior_z, image_z, own_z) in runs.items():
        for key, z in ((name, image_z), (f"{name}_prior", prior_z), (f"{name}_own", own_z)):
            if z is not None:
                picked = probe(z)
                out[key] = round(sum(p == style for p in picked) / len(picked), 3)
                out[f"{key}_styles"] = {s: picked.count(s) for s in sorted(set(picked))}
    log(f"style retrieval ({style} among {len(probe.names)} styles, {len(prompts)} held-out captions), images (the "
        f"prior's z_i): real {out['real']:.0%}, base model {out['before']:.0%} ({out['before_prior']:.0%}), "
        f"fine-tuned {out['after']:.0%} ({out['after_prior']:.0%}); decoded from the real images' own z_i: "
        f"base {out['before_own']:.0%}, fine-tuned {out['after_own']:.0%}")
    return out
