"""The `unclip` command: parses flags and calls the library. No logic of its own."""

import argparse
import json
import sys
from pathlib import Path

from unclip.paths import default_data_dir


def _data_build(a) -> int:
    from unclip.data.build import BuildConfig, build

    sources = a.sources.split(",") if a.sources else None
    cfg = BuildConfig(out=a.out, sources=sources, size=a.size, limit=a.limit, jobs=a.jobs, seed=a.seed,
                      allow_noncommercial=a.allow_noncommercial)
    build(cfg)
    return 0


def _data_import(a) -> int:
    from unclip.data.importer import ImportConfig, import_images

    m = import_images(ImportConfig(src=a.src, out=a.out, size=a.size, default_caption=a.default_caption, style=a.style,
                                   heldout=a.heldout, seed=a.seed, max_pixels=a.max_pixels),
                      log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps({k: m[k] for k in ("counts", "splits", "skipped", "style", "uncaptioned_examples")}))
        return 0
    c, sk = m["counts"], m["skipped"]
    print(f"{a.out}: {c['images']} images, {c['captions']} captions ({m['splits']['train']['images']} train, "
          f"{m['splits']['heldout_images']['images']} held out); skipped {sk['corrupt']} unreadable, "
          f"{sk['uncaptioned']} without a caption, {sk['duplicates']} duplicates")
    if m["uncaptioned_examples"]:
        print("  without a caption, e.g.: " + ", ".join(m["uncaptioned_examples"]) + " (--default-caption TEXT keeps them)")
    return 0


def _data_stats(a) -> int:
    from unclip.data.inspect import format_stats, stats

    s = stats(a.data)
    print(json.dumps(s, indent=1) if a.json else format_stats(s))
    return 0


def _data_show(a) -> int:
    from unclip.data.inspect import contact_sheet, sample

    items = sample(a.data, split=a.split, n=a.n, seed=a.seed)
    sheet = contact_sheet([(im, m["captions"][0]) for im, m in items])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out} ({len(items)} {a.split} samples)")
    return 0


def _train(a) -> int:
    from unclip.train import TrainConfig, train

    options = {}
    for kv in a.option or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--option takes KEY=VALUE, not {kv!r}")
        try:
            options[k] = json.loads(v)  # numbers, booleans, lists
        except ValueError:
            options[k] = v  # a plain string, e.g. a path
    cfg = TrainConfig(stage=a.stage, preset=a.preset, data=a.data, out=a.out, max_steps=a.max_steps,
                      batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr, warmup_steps=a.warmup_steps,
                      ema_decay=a.ema_decay, seed=a.seed, save_minutes=a.save_minutes, threads=a.threads,
                      mixed_precision=a.mixed_precision, resume=a.resume, init_from=a.init_from,
                      lr_schedule=a.lr_schedule, eval_every=a.eval_every, fsdp=a.fsdp, options=options,
                      lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, train_only=a.train_only or "")
    result = train(cfg)
    print(json.dumps(result))
    return 0


def _embed(a) -> int:
    from unclip.conditioning import default_clip_dir, load_clip_dir
    from unclip.embed import SPLITS, clip_embeddings, image_pack, text_features

    clip_dir = a.clip or default_clip_dir()
    clip = load_clip_dir(clip_dir)
    for split in SPLITS:
        images, index = image_pack(a.data, split)
        text = text_features(a.data, split, clip.text_tower)
        emb = clip_embeddings(a.data, split, clip, clip_dir)
        print(f"{split}: {len(images)} images, {len(index['captions'])} captions, z_i {tuple(emb['image_embed'].shape)}, "
              f"z_t {tuple(emb['text_embed'].shape)}, token states {tuple(text['tokens'].shape)}")
    return 0


def _bench_train(a) -> int:
    import torch

    from unclip.bench import bench_train

    if a.threads:
        torch.set_num_threads(a.threads)
    options = {"clip": str(a.clip)} if a.clip else {}
    r = bench_train(a.stage, a.preset, a.data, a.batch_size, steps=a.steps, options=options)
    print(json.dumps(r) if a.json else "\n".join(f"{k:>24}: {v}" for k, v in r.items()))
    return 0


def _bench_generate(a) -> int:
    import torch

    from unclip.bench import bench_generate
    from unclip.models import default_model_dir

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    if a.threads:
        torch.set_num_threads(a.threads)
    r = bench_generate(model, a.samplers.split(","), a.num_images, a.repeats, compare_diffusers=a.diffusers)
    if a.json:
        print(json.dumps(r))
    else:
        for row in r["samplers"]:
            print(f"{row['sampler']:>6} {row['prior_steps']:>3}/{row['decoder_steps']:>3}/{row['upsampler_steps']:>2} steps  "
                  f"{row['seconds']:7.2f} s  {row['seconds_per_image']:6.2f} s/image  ×{row['time_vs_ddpm']} of ddpm")
        print(f"peak RSS {r['peak_rss_mb']} MB, {r['threads']} threads")
        d = r["vs_diffusers"]
        if d:
            print(f"vs diffusers UnCLIPPipeline (same weights, DDPM {'/'.join(map(str, d['steps']))}): ours {d['ours_s']} s, "
                  f"diffusers {d['diffusers_s']} s, ratio {d['time_ratio']}; peak +{d['ours_peak_mb']} MB vs "
                  f"+{d['diffusers_peak_mb']} MB; max |Δ| of the images {d['max_abs_diff']:.2e}")
    return 0


def _bench_serve(a) -> int:
    from unclip.models import default_model_dir
    from unclip.serve.fuzz import GOOD, fuzz, load, start_server

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    key = "bench-key"
    proc, url = start_server(model, "--max-queue", str(a.max_queue), "--api-key", key, threads=a.threads)
    try:
        body = {**GOOD, "decoder_steps": a.decoder_steps, "prior_steps": a.prior_steps, "upsampler_steps": 2}
        r = {"model": str(model), "load": load(url, a.clients, a.seconds, body, api_key=key)}
        if a.fuzz:
            f = fuzz(url, a.fuzz, api_key=key)
            r["fuzz"] = {k: v for k, v in f.items() if k != "unexpected"} | {"unexpected": f["unexpected"][:10]}
    finally:
        proc.terminate()
        proc.wait(30)
    if a.json:
        print(json.dumps(r))
    else:
        ld = r["load"]
        print(f"load: {ld['clients']} clients × {ld['seconds']} s: {ld['completed']} jobs done, p50 {ld['p50_s']} s, "
              f"p95 {ld['p95_s']} s, 429s {ld['429']}, 5xx {ld['5xx']}, errors {ld['errors']}, timeouts {ld['timeouts']}")
        if "fuzz" in r:
            fz = r["fuzz"]
            print(f"fuzz: {fz['requests']} malformed requests: 4xx {fz['4xx']}, 2xx {fz['2xx']}, 5xx {fz['5xx']}, "
                  f"errors {fz['errors']}, healthy after: {fz['healthy_after']}; by status {fz['by_status']}")
    return 0


def _presets(a) -> int:
    from unclip.bench import preset_table

    rows = preset_table()
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['stage']:>10} {r['preset']:<14} {r['params'] / 1e6:>10.2f}M")
    return 0


def _generate(a) -> int:
    import torch

    from unclip.images import grid, save_png
    from unclip.models import default_model_dir, model_hash
    from unclip.pipeline import UnCLIPPipeline

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    _check_prompt(a.prompt)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = UnCLIPPipeline.from_pretrained(model)
    loras = _apply_loras(pipe, a.lora)
    from unclip.sampling import DEFAULT_STEPS

    d = DEFAULT_STEPS.get(a.sampler, {})
    steps = {f"{k}_steps": v if v is not None else d.get(k) for k, v in
             (("prior", a.prior_steps), ("decoder", a.decoder_steps), ("upsampler", a.upsampler_steps))}
    params = {"prompt": a.prompt, "seed": a.seed, "num_images": a.num_images, "prior": a.prior, **steps,
              "prior_guidance_scale": a.prior_guidance, "decoder_guidance_scale": a.decoder_guidance,
              "sampler": a.sampler, "eta": a.eta, "best_of": a.best_of, "model": str(model), "model_hash": model_hash(model),
              "upsampler_strength": a.upsampler_strength if a.upsampler_strength is not None else
              (pipe.upsampler.config.strength if pipe.upsampler is not None else None),
              **({"lora": loras} if loras else {})}
    out = pipe(a.prompt, a.num_images, **steps, prior_guidance_scale=a.prior_guidance,
               decoder_guidance_scale=a.decoder_guidance, sampler=a.sampler, eta=a.eta, best_of=a.best_of,
               prior=a.prior, upsample=not a.no_upsample, upsampler_strength=a.upsampler_strength,
               generator=torch.Generator().manual_seed(a.seed), progress=True)
    save_png(grid(out.images), a.out, params)
    print(f"wrote {a.out} ({a.num_images} images of {out.images[0].size[0]} px)")
    return 0


def _guided(a) -> int:
    import torch

    pipe, model = _load_pipe(a)
    _check_prompt(a.prompt)
    out = pipe.clip_guided(a.prompt, a.num_images, steps=a.decoder_steps, clip_guidance_scale=a.clip_guidance,
                           cutn=a.cutn, condition=a.condition, guidance_scale=a.decoder_guidance, sampler=a.sampler,
                           upsampler_steps=a.upsampler_steps, upsample=not a.no_upsample,
                           generator=torch.Generator().manual_seed(a.seed), progress=True)
    _save(out.images, a, _common(a, model, task="clip_guided", prompt=a.prompt, clip_guidance_scale=a.clip_guidance,
                                 cutn=a.cutn, condition=a.condition, sampler=a.sampler))
    return 0


def _probe(a) -> int:
    import torch

    ks = [int(k) for k in a.ks.split(",")]
    pipe, model = _load_pipe(a)
    out = pipe.pca_reconstructions(_open_image(a.image), ks, decoder_steps=a.decoder_steps,
                                   decoder_guidance_scale=a.decoder_guidance, generator=torch.Generator().manual_seed(a.seed))
    _save(out.images, a, _common(a, model, task="pca_probe", image=str(a.image), ks=ks), cols=len(ks))
    return 0


def _pca(a) -> int:
    import numpy as np
    import torch

    from unclip.conditioning import Conditioning
    from unclip.models import default_model_dir
    from unclip.pca import fit_pca, save_pca

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    z = Conditioning(a.data, "train", model).image_embed  # (N, D), computed by `unclip embed` if missing
    pca = fit_pca(torch.from_numpy(np.asarray(z, dtype=np.float32)))
    path = save_pca(pca, model)
    share = (pca["variance"].cumsum(0) / pca["variance"].sum())
    print(f"wrote {path} from {len(z)} z_i; variance explained by 1/8/32/64 components: "
          + " / ".join(f"{float(share[k - 1]):.3f}" for k in (1, 8, 32, 64)))
    return 0


def _export(a) -> int:
    from unclip.interop import export_diffusers

    pipe, model = _load_pipe(a)
    out = export_diffusers(pipe, a.out)
    print(f"wrote {out} (diffusers UnCLIPPipeline layout; load it with `import unclip.interop` first)")
    return 0


def _serve(a) -> int:
    import os

    from unclip.serve import serve
    from unclip.serve.app import Limits

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise RuntimeError("serving needs the serve extra: pip install 'unclip[serve]'") from None
    key = a.api_key or os.environ.get("UNCLIP_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: serving on {a.host} without an API key; anyone who can reach it can use it", file=sys.stderr)
    limits = Limits(max_queue=a.max_queue, max_images=a.max_images, max_steps=a.max_steps,
                    max_upload_bytes=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels)
    serve(a.model, a.host, a.port, key, limits, a.threads)
    return 0


def _judge_dir(given: Path | None) -> Path:
    from unclip.models import JUDGE
    from unclip.paths import runs_dir

    d = Path(given) if given else JUDGE if (JUDGE / "clip.safetensors").exists() else runs_dir() / "judge" / "model"
    if not (d / "clip.safetensors").exists():
        raise FileNotFoundError(f"no judge at {d}: train one with `unclip train clip --preset judge --seed 1 "
                                "--option subset=0.9 --out ~/.cache/unclip/runs/judge` or pass --judge DIR")
    return d


def _eval(a) -> int:
    from unclip.conditioning import load_clip_dir
    from unclip.evaluate import evaluate, strip

    pipe, model = _load_pipe(a)
    judge_dir = _judge_dir(a.judge)
    kw = {"sampler": a.sampler, **({"upsample": False} if a.no_upsample else {})}
    for k in ("prior_steps", "decoder_steps", "upsampler_steps"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    r = evaluate(pipe, load_clip_dir(judge_dir), a.data, n=a.n, diversity_prompts=a.diversity_prompts,
                 diversity_samples=a.diversity_samples, seed=a.seed, generate_kwargs=kw)
    r = strip(r)
    r["model"], r["judge"] = str(model), str(judge_dir)
    if a.json:
        print(json.dumps(r))
        return 0
    for split, m in r["splits"].items():
        print(f"{split:<17} FD {m['fd']:.3f} [{m['fd_ci95'][0]:.3f}, {m['fd_ci95'][1]:.3f}]  precision {m['precision']:.3f}  "
              f"recall {m['recall']:.3f}  CLIP score {m['clip_score']:.3f} (real {m['clip_score_real']:.3f})  "
              f"top-1 {m['top1']:.3f} / top-5 {m['top5']:.3f} (real {m['top1_real']:.3f} / {m['top5_real']:.3f})")
    d = r["diversity"]
    print(f"diversity (1 - cos within a prompt): generated {d['generated']:.3f}, real within a concept {d['real']:.3f}")
    return 0


def _finetune(a) -> int:
    from unclip.finetune import FinetuneConfig, finetune

    r = finetune(FinetuneConfig(src=a.src, out=a.out, base=a.base, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                lora_rank=a.lora_rank, prior=not a.no_prior, default_caption=a.default_caption,
                                style=a.style, threads=a.threads, seed=a.seed))
    print(json.dumps(r) if a.json else f"wrote {r['model']} and {r['before_after']}")
    return 0


def _report(a) -> int:
    from unclip.conditioning import load_clip_dir
    from unclip.report import SECTIONS, run_report

    pipe, model = _load_pipe(a)
    judge_dir = _judge_dir(a.judge)
    sections = a.sections.split(",") if a.sections else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}")
    run_report(pipe, load_clip_dir(judge_dir), a.data, a.out, n=a.n, seed=a.seed, sections=sections)
    print(f"wrote {Path(a.out) / 'report.md'}")
    return 0


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError("the prompt is empty; give a description such as \"a grinning cat, 3D style\"")


def _apply_loras(pipe, values) -> list[str]:
    from unclip.lora import parse_lora_arg

    out = []
    for v in values or []:
        path, scale = parse_lora_arg(v)
        pipe.load_lora(path, scale)
        out.append(f"{path}:{scale}")
    return out


def _retrieval(a) -> int:
    from unclip.clip_task import concept_retrieval
    from unclip.conditioning import default_clip_dir, load_clip_dir

    clip = load_clip_dir(a.clip or default_clip_dir())
    rows = [concept_retrieval(clip, a.data, split) for split in ("heldout_images", "heldout_concepts")]
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['split']:<18} {r['images']:>6} images  top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  "
                  f"(among {r['candidates']} concepts)")
    return 0


def _open_image(path: Path):
    from unclip.data.render import CorruptImage, open_raster

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    try:
        return open_raster(path.read_bytes())
    except CorruptImage as e:
        raise ValueError(f"{path}: {e}") from None


def _load_pipe(a):
    import torch

    from unclip.models import default_model_dir
    from unclip.pipeline import UnCLIPPipeline

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    if a.threads:
        torch.set_num_threads(a.threads)
    return UnCLIPPipeline.from_pretrained(model), model


def _common(a, model, **extra) -> dict:
    from unclip.models import model_hash

    return {"seed": a.seed, "decoder_steps": a.decoder_steps, "decoder_guidance_scale": a.decoder_guidance,
            "model": str(model), "model_hash": model_hash(model), **extra}


def _save(images, a, params, cols=None) -> None:
    from unclip.images import grid, save_png

    save_png(grid(images, cols), a.out, params)
    print(f"wrote {a.out} ({len(images)} images)")


def _vary(a) -> int:
    import torch

    pipe, model = _load_pipe(a)
    out = pipe.variations(_open_image(a.image), a.num_images, eta=a.eta, use_inversion=a.inversion,
                          decoder_steps=a.decoder_steps, decoder_guidance_scale=a.decoder_guidance,
                          generator=torch.Generator().manual_seed(a.seed))
    _save(out.images, a, _common(a, model, task="variations", image=str(a.image), eta=a.eta, inversion=a.inversion))
    return 0


def _invert(a) -> int:
    import torch

    from unclip.images import to_output
    from unclip.pipeline import pil_to_tensor
    from unclip.weights import save_safetensors

    pipe, model = _load_pipe(a)
    image = _open_image(a.image)
    z_i, x_T = pipe.invert(image, a.caption, steps=a.decoder_steps, fixed_point_iters=a.fixed_point_iters)
    latents = Path(a.out).with_suffix(".safetensors")
    save_safetensors({"image_embeds": z_i, "latents": x_T}, latents, {"steps": str(a.decoder_steps)})
    back = pipe.from_embeds(z_i, a.caption, latents=x_T, decoder_steps=a.decoder_steps, decoder_guidance_scale=1.0,
                            upsample=False, output_type="pt").images  # (1, 3, S, S) in [0, 1]
    target = pil_to_tensor(image, back.shape[-1]) * 0.5 + 0.5
    psnr = float(10 * torch.log10(1 / ((back - target) ** 2).mean()))
    _save(to_output(torch.cat([target, back]) * 2 - 1, "pil"), a,
          _common(a, model, task="invert", image=str(a.image), psnr=round(psnr, 2)))
    print(f"x_T and z_i in {latents}; reconstruction PSNR {psnr:.2f} dB at guidance 1")
    return 0


def _as_image_or_prompt(value: str):
    p = Path(value)
    return _open_image(p) if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp") else value


def _interpolate(a) -> int:
    import torch

    pipe, model = _load_pipe(a)
    x, y = _as_image_or_prompt(a.a), _as_image_or_prompt(a.b)
    if isinstance(x, str) != isinstance(y, str):
        raise ValueError("interpolate takes two images or two prompts, not one of each")
    out = pipe.interpolate(x, y, a.frames, decoder_steps=a.decoder_steps, decoder_guidance_scale=a.decoder_guidance,
                           generator=torch.Generator().manual_seed(a.seed))
    _save(out.images, a, _common(a, model, task="interpolate", start=a.a, end=a.b, frames=a.frames), cols=a.frames)
    frames = out.images + out.images[::-1][1:-1]  # there and back
    for ext in (".gif", ".webp"):
        anim = Path(a.out).with_suffix(ext)
        frames[0].save(anim, save_all=True, append_images=frames[1:], duration=120, loop=0,
                       **({"lossless": True} if ext == ".webp" else {}))
        print(f"wrote {anim}")
    return 0


def _edit(a) -> int:
    import torch

    thetas = [float(t) for t in a.thetas.split(",")]
    pipe, model = _load_pipe(a)
    out = pipe.text_diff(_open_image(a.image), a.from_text, a.to_text, thetas, decoder_steps=a.decoder_steps,
                         decoder_guidance_scale=a.decoder_guidance, generator=torch.Generator().manual_seed(a.seed))
    _save(out.images, a, _common(a, model, task="text_diff", image=str(a.image), **{"from": a.from_text, "to": a.to_text},
                                 thetas=thetas), cols=len(thetas))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unclip", description="unCLIP: text-to-image with CLIP latents")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build and inspect the emoji dataset").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build", help="fetch emoji packages, render, caption, split and shard them")
    b.add_argument("--out", type=Path, default=default_data_dir(), help="dataset directory (default: %(default)s)")
    b.add_argument("--sources", help="comma-separated source names (default: every commercial-use source)")
    b.add_argument("--size", type=int, default=256, help="render size of vector art in pixels (default: 256)")
    b.add_argument("--limit", type=int, help="at most this many images per source (a quick slice)")
    b.add_argument("--jobs", type=int, default=0, help="render processes (default: one per core)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and shuffle (default: 0)")
    b.add_argument("--allow-noncommercial", action="store_true", help="include sources licensed for non-commercial use")
    b.set_defaults(fn=_data_build)

    im = data.add_parser("import", help="your captioned images (folder or WebDataset tars) -> shards for embed/train")
    im.add_argument("src", type=Path, help="a folder (metadata.jsonl/.csv or NAME.txt captions) or .tar shards")
    im.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    im.add_argument("--size", type=int, default=256, help="largest side kept, in pixels (default: 256)")
    im.add_argument("--default-caption", help="caption for images that have none (default: skip them)")
    im.add_argument("--style", help="style name recorded for these images (default: the source's name)")
    im.add_argument("--heldout", type=float, default=0.05, help="share of images held out for validation")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--max-pixels", type=int, default=4096 * 4096, help="larger images are skipped")
    im.add_argument("--json", action="store_true")
    im.set_defaults(fn=_data_import)

    s = data.add_parser("stats", help="counts per source, style and split")
    s.add_argument("--data", type=Path, default=default_data_dir())
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_data_stats)

    sh = data.add_parser("show", help="write a contact sheet of random samples with captions")
    sh.add_argument("--data", type=Path, default=default_data_dir())
    sh.add_argument("--split", default="train")
    sh.add_argument("-n", type=int, default=16)
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", type=Path, default=Path("contact_sheet.png"))
    sh.set_defaults(fn=_data_show)

    e = sub.add_parser("embed", help="precompute z_i, z_t and caption token states next to the shards")
    e.add_argument("--data", type=Path, default=default_data_dir())
    e.add_argument("--clip", type=Path, help="CLIP stage directory (default: the shipped model, else the CLIP run)")
    e.set_defaults(fn=_embed)

    from unclip.stages import STAGES

    t = sub.add_parser("train", help="train one stage (resumable; runs under `accelerate launch` too)")
    t.add_argument("stage", choices=STAGES)
    t.add_argument("--preset", default="small", help="model size preset (see unclip/presets/STAGE.json)")
    t.add_argument("--data", type=Path, default=default_data_dir())
    t.add_argument("--out", type=Path, help="run directory (default: ~/.cache/unclip/runs/STAGE-PRESET)")
    t.add_argument("--max-steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=64, help="global batch per optimizer step")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-minutes", type=float, default=5.0, help="checkpoint interval in minutes")
    t.add_argument("--eval-every", type=int, default=250, help="held-out loss every N steps")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    t.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state across processes (FSDP2)")
    t.add_argument("--resume", action="store_true", help="continue from the run's checkpoint when present")
    t.add_argument("--init-from", type=Path, help="start from these weights when there is no checkpoint")
    t.add_argument("--option", action="append", metavar="KEY=VALUE", help="stage-specific setting (repeatable)")
    t.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank on --init-from (decoder, prior)")
    t.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    t.add_argument("--train-only", help="comma-separated parameter-name prefixes to train, e.g. text_proj (default: all)")
    t.set_defaults(fn=_train)

    r = sub.add_parser("retrieval", help="zero-shot concept retrieval of the CLIP stage on held-out images and concepts")
    r.add_argument("--data", type=Path, default=default_data_dir())
    r.add_argument("--clip", type=Path, help="CLIP stage directory (default: the shipped model, else the CLIP run)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_retrieval)

    g = sub.add_parser("generate", help="text -> image grid (PNG with its parameters)")
    g.add_argument("prompt")
    g.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    g.add_argument("--num-images", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpm++ (default: ddim)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    g.add_argument("--prior", choices=("diffusion", "ar", "text", "none"), default="diffusion",
                   help="diffusion | ar, or the ablations: text (z_t as z_i), none (caption-only decoder)")
    g.add_argument("--best-of", type=int, default=2, help="prior samples per image; keeps the closest to the text")
    g.add_argument("--prior-steps", type=int, help="default: the sampler's (ddpm 25, ddim 25, dpm++ 6)")
    g.add_argument("--decoder-steps", type=int, help="default: the sampler's (ddpm 50, ddim 25, dpm++ 12)")
    g.add_argument("--upsampler-steps", type=int, help="default: the sampler's (ddpm 7, ddim 7, dpm++ 2)")
    g.add_argument("--prior-guidance", type=float, default=4.0)
    g.add_argument("--decoder-guidance", type=float, default=8.0)
    g.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    g.add_argument("--upsampler-strength", type=float,
                   help="1: upsample from pure noise (Karlo); below 1: from the noised bicubic image, fewer steps "
                        "(default: the upsampler's own)")
    g.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="a LoRA adapter from `train --lora-rank` "
                   "(repeatable; SCALE multiplies its update, default 1)")
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--out", type=Path, default=Path("unclip.png"))
    g.set_defaults(fn=_generate)

    def image_command(name, help_, fn, out):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--decoder-steps", type=int, default=25)
        c.add_argument("--decoder-guidance", type=float, default=3.0)
        c.add_argument("--threads", type=int, default=0)
        c.add_argument("--out", type=Path, default=Path(out))
        c.set_defaults(fn=fn)
        return c

    v = image_command("vary", "variations of an image: same z_i, new details", _vary, "variations.png")
    v.add_argument("image", type=Path)
    v.add_argument("--num-images", type=int, default=4)
    v.add_argument("--eta", type=float, default=1.0, help="DDIM η: 0 keeps the most, 1 varies the most")
    v.add_argument("--inversion", action="store_true", help="start from the image's own inverted x_T")
    i = image_command("invert", "DDIM inversion: an image -> (z_i, x_T), saved as safetensors, with its reconstruction",
                      _invert, "inversion.png")
    i.add_argument("image", type=Path)
    i.add_argument("--caption", default="", help="the caption to invert under (default: none)")
    i.add_argument("--fixed-point-iters", type=int, default=0, help="per-step refinements (exact inversion as it grows)")
    it = image_command("interpolate", "slerp between two images (or two prompts): a grid and a GIF", _interpolate,
                       "interpolation.png")
    it.add_argument("a", help="image path or prompt")
    it.add_argument("b", help="image path or prompt")
    it.add_argument("--frames", type=int, default=8)
    ed = image_command("edit", "text diff: move an image from one caption towards another", _edit, "edit.png")
    ed.add_argument("image", type=Path)
    ed.add_argument("--from", dest="from_text", required=True, help="a caption of the image as it is")
    ed.add_argument("--to", dest="to_text", required=True, help="the caption it should move towards")
    ed.add_argument("--thetas", default="0,0.1,0.2,0.3,0.4,0.5", help="comma-separated slerp amounts")

    gd = image_command("guided", "the CLIP-guided baseline: the decoder steered by CLIP gradients (no prior, no z_i)",
                       _guided, "clip_guided.png")
    gd.add_argument("prompt")
    gd.add_argument("--num-images", type=int, default=4)
    gd.add_argument("--clip-guidance", type=float, default=300.0, help="scale of the CLIP similarity gradient")
    gd.add_argument("--cutn", type=int, default=16, help="random crops scored by CLIP per image and step")
    gd.add_argument("--condition", choices=("caption", "none"), default="caption",
                    help="decoder conditioned on the caption (GLIDE-like) or on nothing")
    gd.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpm++ (default: ddim)")
    gd.add_argument("--upsampler-steps", type=int, default=7)
    gd.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    pb = image_command("probe", "what z_i keeps: decode an image from its first k PCA components, for each k", _probe,
                       "pca_probe.png")
    pb.add_argument("image", type=Path)
    pb.add_argument("--ks", default="1,2,4,8,16,32,64,384", help="comma-separated component counts")

    ex = sub.add_parser("export", help="write a model in another format").add_subparsers(dest="export_format", required=True)
    exd = ex.add_parser("diffusers", help="diffusers' UnCLIPPipeline layout (Karlo's), fp32 safetensors")
    exd.add_argument("out", type=Path)
    exd.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    exd.add_argument("--threads", type=int, default=0)
    exd.set_defaults(fn=_export)

    ft = sub.add_parser("finetune", help="import your images, embed them and fine-tune the prior and decoder, in one go")
    ft.add_argument("src", type=Path, help="a folder of captioned images or WebDataset .tar shards (see `data import`)")
    ft.add_argument("--out", type=Path, required=True, help="where data/, runs/, model/ (or lora/) and before_after.png go")
    ft.add_argument("--base", type=Path, help="model to start from (default: the shipped model)")
    ft.add_argument("--steps", type=int, default=300, help="optimizer steps per stage")
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead of every weight")
    ft.add_argument("--no-prior", action="store_true", help="fine-tune the decoder only (captions like the base's)")
    ft.add_argument("--default-caption", help="caption for images that have none")
    ft.add_argument("--style", help="style name recorded for the images")
    ft.add_argument("--threads", type=int, default=0)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--json", action="store_true")
    ft.set_defaults(fn=_finetune)

    def judged_command(name, help_, fn, n):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
        c.add_argument("--judge", type=Path, help="judge CLIP directory (default: the shipped judge)")
        c.add_argument("--data", type=Path, default=default_data_dir())
        c.add_argument("--n", type=int, default=n, help="prompts per held-out split (and setting)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--threads", type=int, default=0)
        c.set_defaults(fn=fn)
        return c

    ev = judged_command("eval", "generated vs real held-out images under an independent judge", _eval, 64)
    ev.add_argument("--diversity-prompts", type=int, default=8)
    ev.add_argument("--diversity-samples", type=int, default=4)
    ev.add_argument("--sampler", default="ddim")
    ev.add_argument("--prior-steps", type=int)
    ev.add_argument("--decoder-steps", type=int)
    ev.add_argument("--upsampler-steps", type=int)
    ev.add_argument("--no-upsample", action="store_true", help="judge the decoder's images (the judge sees 64 px anyway)")
    ev.add_argument("--json", action="store_true")
    rp = judged_command("report", "evaluation + the paper's ablations -> OUT/report.md with plots and grids", _report, 16)
    rp.add_argument("--out", type=Path, default=Path("docs"))
    rp.add_argument("--sections", help="comma-separated subset of: " + ", ".join(
        ("headline", "conditioning", "guidance", "priors", "samplers", "clip_guided")))

    sv = sub.add_parser("serve", help="REST API (+ A1111 txt2img) and a web page, on one model worker")
    sv.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require this key (default: $UNCLIP_API_KEY; none: open)")
    sv.add_argument("--max-queue", type=int, default=8, help="jobs waiting before requests get 429")
    sv.add_argument("--max-images", type=int, default=8, help="images per request")
    sv.add_argument("--max-steps", type=int, default=100, help="steps per stage per request")
    sv.add_argument("--max-upload-mb", type=float, default=8.0, help="largest request body")
    sv.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest uploaded image (width × height)")
    sv.add_argument("--threads", type=int, default=0)
    sv.set_defaults(fn=_serve)

    pc = sub.add_parser("pca", help="fit the PCA of the training split's z_i into the model directory (for `probe`)")
    pc.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    pc.add_argument("--data", type=Path, default=default_data_dir())
    pc.set_defaults(fn=_pca)

    pr = sub.add_parser("presets", help="list every model size preset with its parameter count")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=_presets)

    bench = sub.add_parser("bench", help="measure speed").add_subparsers(dest="bench_command", required=True)
    bt = bench.add_parser("train", help="training samples/s, FLOPs per sample and MFU vs this machine's matmul peak")
    bt.add_argument("--stage", choices=STAGES, default="decoder")
    bt.add_argument("--preset", default="small")
    bt.add_argument("--data", type=Path, default=default_data_dir())
    bt.add_argument("--clip", type=Path, help="CLIP stage directory (prior/decoder conditioning)")
    bt.add_argument("--batch-size", type=int, default=32)
    bt.add_argument("--steps", type=int, default=5)
    bt.add_argument("--threads", type=int, default=0)
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(fn=_bench_train)
    bg = bench.add_parser("generate", help="text -> image time per sampler at its default steps")
    bg.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    bg.add_argument("--samplers", default="ddpm,ddim,dpm++")
    bg.add_argument("--num-images", type=int, default=4)
    bg.add_argument("--repeats", type=int, default=2, help="timed calls per sampler; the best is kept")
    bg.add_argument("--threads", type=int, default=0)
    bg.add_argument("--diffusers", action="store_true", help="also time diffusers' UnCLIPPipeline on the same weights")
    bg.add_argument("--json", action="store_true")
    bg.set_defaults(fn=_bench_generate)
    bs = bench.add_parser("serve", help="a real server on loopback: concurrent clients, then a fuzz run")
    bs.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    bs.add_argument("--clients", type=int, default=4)
    bs.add_argument("--seconds", type=float, default=30.0)
    bs.add_argument("--max-queue", type=int, default=4, help="the server's queue bound (small, to see 429s)")
    bs.add_argument("--prior-steps", type=int, default=6)
    bs.add_argument("--decoder-steps", type=int, default=6)
    bs.add_argument("--fuzz", type=int, default=500, help="malformed requests after the load (0: none)")
    bs.add_argument("--threads", type=int, default=0, help="the server's torch threads")
    bs.add_argument("--json", action="store_true")
    bs.set_defaults(fn=_bench_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept, run the same command again to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"unclip: error: {e}", file=sys.stderr)
        return 2
