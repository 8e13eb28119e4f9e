"""`unclip eval`, `report` and `bench train|generate|serve`."""

import json
from pathlib import Path

from unclip.cli.common import (add_guidance_interval, add_precision, apply_loras, find_judge, load_pipe, model_dir,
                               number_list)
from unclip.paths import default_data_dir


def register(sub) -> None:
    from unclip.stages import STAGES

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
    ev.add_argument("--sampler", choices=("ddpm", "ddim", "dpm++"), default="ddim")
    ev.add_argument("--prior-steps", type=int)
    ev.add_argument("--decoder-steps", type=int)
    ev.add_argument("--upsampler-steps", type=int)
    ev.add_argument("--no-upsample", action="store_true", help="judge the decoder's images (the judge sees 64 px anyway)")
    ev.add_argument("--prior", choices=("diffusion", "ar", "text", "none", "image"), default="diffusion",
                    help="where z_i comes from: a prior, the caption's z_t, none (caption only), or image: each held-out "
                         "image's own z_i (an oracle prior: what the decoder reaches from a perfect z_i; no diversity)")
    ev.add_argument("--prior-guidance", type=float, help="default: the pipeline's (4)")
    ev.add_argument("--decoder-guidance", type=float, help="default: the model's (its decoder config), else 8")
    add_guidance_interval(ev)
    ev.add_argument("--best-of", type=int, help="prior samples per image, the one closest to z_t kept (default: the pipeline's, 2)")
    ev.add_argument("--rerank", type=int, help="decoder images per image, the one the CLIP stage finds closest to the "
                    "prompt kept (default: the pipeline's, 1: none)")
    ev.add_argument("--rerank-at", type=int, metavar="STEP", help="with --rerank: compare the candidates at this "
                    "decoder step (their predicted clean images) and finish the kept one only")
    ev.add_argument("--reconstructions", type=int, default=16,
                    help="held-out images decoded from their own z_i: the decoder alone, without the prior (0: skip)")
    ev.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="a LoRA adapter applied first (repeatable)")
    add_precision(ev)
    ev.add_argument("--paired-with", type=Path, metavar="BASE.json",
                    help="also compare, prompt by prompt, with an earlier `eval --json` report of the same n and seed")
    ev.add_argument("--json", action="store_true")

    ee = judged_command("eval-edits", "variations, interpolations and text diffs of held-out images under the judge",
                        _eval_edits, 16)
    ee.add_argument("--variations", type=int, default=4, help="variations per image (as `unclip vary`)")
    ee.add_argument("--eta", type=float, default=1.0, help="the variations' DDIM η (0 keeps the most, 1 varies the most)")
    ee.add_argument("--inversion", action="store_true", help="variations start from the image's inverted x_T (as "
                    "`vary --inversion`; decoded at guidance 1)")
    ee.add_argument("--frames", type=int, default=6, help="frames per interpolation (image i with image i + n/2)")
    ee.add_argument("--thetas", type=number_list(float), default=[0, 0.1, 0.2, 0.3, 0.4, 0.5],  # edit_eval.THETAS
                    help="the text diffs' slerp amounts (default 0,0.1,0.2,0.3,0.4,0.5)")
    ee.add_argument("--decoder-steps", type=int, default=25)
    ee.add_argument("--sections", help="comma-separated subset of: variations, interpolations, text_diffs (default: all)")
    ee.add_argument("--paired-with", type=Path, metavar="BASE.json",
                    help="also compare, image by image, with an earlier `eval-edits --json` report of the same n and seed")
    ee.add_argument("--json", action="store_true")

    rp = judged_command("report", "evaluation + the paper's ablations -> OUT/report.md with plots and grids", _report, 16)
    rp.add_argument("--out", type=Path, default=Path("docs"))
    rp.add_argument("--sections", help="comma-separated subset of: " + ", ".join(
        ("headline", "conditioning", "guidance", "priors", "samplers", "clip_guided")))
    rp.add_argument("--no-upsample", action="store_true", help="judge and time the decoder's images (the judge sees 64 px)")
    rp.add_argument("--no-diffusers", action="store_true", help="leave diffusers' UnCLIPPipeline out of the samplers section")
    rp.add_argument("--glide-decoder", type=Path, metavar="DIR",
                    help="a caption-only decoder of the model's size (`unclip train decoder --option image_drop=1`; "
                         "its run's model/ directory): the guidance section compares unCLIP with it (GLIDE-like)")

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
    bg.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16 (with --diffusers, bf16 "
                    "also races diffusers' fp32 as a third contestant)")
    bg.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="the process's glibc malloc: tuned as every unclip command runs (activations' memory kept "
                         "between UNet calls, for both contestants), or glibc's default, as a plain Python script "
                         "importing either library gets")
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


def _read_report(path: Path, command: str) -> dict:
    """--paired-with: an earlier `unclip COMMAND --json` report, with a clear error when it is not one."""
    try:
        base = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--paired-with {path}: not a readable `unclip {command} --json` report ({e})") from e
    key = "splits" if command == "eval" else "sources"
    if not isinstance(base, dict) or key not in base:
        raise ValueError(f"--paired-with {path}: not an `unclip {command} --json` report (no {key})")
    return base


def _eval(a) -> int:
    from unclip.conditioning import load_clip_dir
    from unclip.data.build import ensure_dataset
    from unclip.evaluate import evaluate, strip

    base = _read_report(a.paired_with, "eval") if a.paired_with is not None else None
    if a.prior in ("image", "text", "none") and (a.prior_steps is not None or a.prior_guidance is not None
                                                 or a.best_of is not None):
        raise ValueError(f"--prior {a.prior} samples no prior: drop --prior-steps, --prior-guidance and --best-of")
    if a.prior == "image" and (a.rerank is not None or a.rerank_at is not None):
        raise ValueError("--prior image decodes each held-out image's own z_i once: drop --rerank (and --rerank-at)")
    ensure_dataset(a.data)
    pipe, model = load_pipe(a)
    loras = apply_loras(pipe, a.lora)
    judge_dir = find_judge(a.judge)
    kw = {"sampler": a.sampler, **({"upsample": False} if a.no_upsample else {})}
    for k in ("prior_steps", "decoder_steps", "upsampler_steps"):
        if getattr(a, k) is not None:
            kw[k] = getattr(a, k)
    for k in ("prior_guidance", "decoder_guidance"):
        if getattr(a, k) is not None:
            kw[k + "_scale"] = getattr(a, k)
    if a.best_of is not None:
        kw["best_of"] = a.best_of
    if a.rerank is not None:
        kw["rerank"] = a.rerank
    if a.rerank_at is not None:
        kw["rerank_at"] = a.rerank_at
    generate, diversity_prompts = None, a.diversity_prompts
    if a.prior == "image":
        from unclip.evaluate import own_embeds_generate

        generate, diversity_prompts = own_embeds_generate(pipe, a.data, **kw), 0
    elif a.prior != "diffusion":
        kw["prior"] = a.prior
    r = evaluate(pipe, load_clip_dir(judge_dir), a.data, n=a.n, diversity_prompts=diversity_prompts,
                 diversity_samples=a.diversity_samples, seed=a.seed, generate_kwargs=kw, reconstructions=a.reconstructions,
                 generate=generate)
    r = strip(r)
    r["model"], r["judge"], r["inference_precision"], r["prior"] = str(model), str(judge_dir), a.precision, a.prior
    r["generate"]["decoder_guidance_interval"] = pipe.decoder.config.guidance_interval  # None: every step
    if loras:
        r["lora"] = loras
    if base is not None:
        from unclip.evaluate import paired

        r["paired_with"] = {"report": str(a.paired_with), "model": base.get("model"), "splits": paired(base, r)}
    if a.json:
        print(json.dumps(r))
        return 0
    for split, m in r["splits"].items():
        print(f"{split:<17} FD {m['fd']:.3f} (n {m['prompts']})  KID {m['kid']:.4f} ± {m['kid_se']:.4f} (se)  precision {m['precision']:.3f}  "
              f"recall {m['recall']:.3f}  CLIP score {m['clip_score']:.3f} (real {m['clip_score_real']:.3f})  "
              f"top-1 {m['top1']:.3f} / top-5 {m['top5']:.3f} (real {m['top1_real']:.3f} / {m['top5_real']:.3f})  "
              f"concept MRR {m['concept_mrr']:.3f} (real {m['concept_mrr_real']:.3f})")
        c = m.get("leak_free")
        if c and c["prompts"]:
            print(f"{'':<17} leak-free prompts only ({c['prompts']} of {m['prompts']}: no near copy or gender/direction twin "
                  f"in training): CLIP score {c['clip_score']:.3f} (real {c['clip_score_real']:.3f})  top-5 {c['top5']:.3f} "
                  f"(real {c['top5_real']:.3f})  concept MRR {c['concept_mrr']:.3f} (real {c['concept_mrr_real']:.3f})")
    if base is not None:
        for split, m in r["paired_with"]["splits"].items():
            print(f"{split:<17} minus {a.paired_with.name}, same prompts: " + ", ".join(
                f"{k} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for k, v in m.items()))
    d = r.get("diversity")
    if d:
        se = f" ± {d['generated_se']:.3f}" if d.get("generated_se") is not None else ""  # over prompts
        print(f"diversity (1 - cos within a prompt): generated {d['generated']:.3f}{se}, real within a concept {d['real']:.3f}")
    if "reconstruction" in r:
        m = r["reconstruction"]
        print(f"decoder from the images' own z_i ({m['images']} held-out images): judge cosine to the source {m['cosine']:.3f}, "
              f"source retrieved top-1 {m['top1']:.3f} / top-5 {m['top5']:.3f} (chance {1 / m['images']:.3f})")
    return 0


def _eval_edits(a) -> int:
    from unclip.conditioning import load_clip_dir
    from unclip.data.build import ensure_dataset
    from unclip.edit_eval import SECTIONS, evaluate_edits, paired_edits

    base = _read_report(a.paired_with, "eval-edits") if a.paired_with is not None else None
    ensure_dataset(a.data)
    pipe, model = load_pipe(a)
    judge_dir = find_judge(a.judge)
    r = evaluate_edits(pipe, load_clip_dir(judge_dir), a.data, n=a.n, variations_per_image=a.variations, frames=a.frames,
                       thetas=a.thetas, seed=a.seed, decoder_steps=a.decoder_steps, eta=a.eta,
                       inversion=a.inversion, sections=a.sections.split(",") if a.sections else SECTIONS)
    r["model"], r["judge"] = str(model), str(judge_dir)
    if base is not None:
        r["paired_with"] = {"report": str(a.paired_with), "model": base.get("model"), "sections": paired_edits(base, r)}
    if a.json:
        print(json.dumps(r))
        return 0
    s = r["sources"]
    print(f"{r['n']} held-out images: judged style {s['style_accuracy']:.3f} right among {len(r['styles'])} styles, "
          f"concept top-5 {s['top5']:.3f}; two unrelated sources' cosine {s['unrelated_cosine']:.3f}")
    if "variations" in r:
        v = r["variations"]
        div = f"diversity {v['diversity']:.3f}" if v["diversity"] is not None else "no diversity (one per image)"
        start = ", from the inverted x_T" if v["inversion"] else ""
        print(f"variations ({v['per_image']} per image, eta {v['eta']:g}{start}): cosine to the source {v['cosine']:.3f}, "
              f"concept top-5 {v['top5']:.3f}, style kept {v['style_kept']:.3f} (the true style {v['style_true']:.3f}), {div}")
    for name in ("unclip", "crossfade") if "interpolations" in r else ():
        i, m = r["interpolations"], r["interpolations"][name]
        print(f"interpolations, {name:<9} ({i['pairs']} pairs, {i['frames']} frames): evenness {m['evenness']:.2f} "
              f"(1: even), monotone {m['monotone']:.3f}, endpoints' cosine {m['start_cosine']:.3f} / "
              f"{m['end_cosine']:.3f}, precision interior {m['precision_interior']:.3f} (ends {m['precision_ends']:.3f})")
    for m in r["text_diffs"]["per_theta"] if "text_diffs" in r else ():
        print(f"text diff theta {m['theta']:.2f}: asked style {m['target_style']:.3f}, source style {m['source_style']:.3f}, "
              f"concept top-5 {m['top5']:.3f}, cosine to the source {m['cosine']:.3f}")
    for section, m in r.get("paired_with", {}).get("sections", {}).items():
        groups = m.items() if section == "text_diffs" else [("", m)]
        for theta, mm in groups:
            where = f"{section}{' theta ' + theta if theta else ''}"
            print(f"{where} minus {a.paired_with.name}, same images: " + ", ".join(
                f"{k} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" for k, v in mm.items()))
    print(f"{r['seconds']:.0f} s")
    return 0


def _report(a) -> int:
    from unclip.conditioning import load_clip_dir
    from unclip.data.build import ensure_dataset
    from unclip.report import SECTIONS, run_report

    pipe, model = load_pipe(a)
    judge_dir = find_judge(a.judge)
    sections = a.sections.split(",") if a.sections else SECTIONS
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {', '.join(sorted(unknown))}; sections: {', '.join(SECTIONS)}")
    glide = None
    if a.glide_decoder:
        from unclip.decoder import Decoder
        from unclip.report import check_glide

        if not (a.glide_decoder / "decoder_config.json").exists():
            raise FileNotFoundError(f"--glide-decoder {a.glide_decoder}: no decoder_config.json there (a decoder "
                                    "run's model/ directory, or a model directory with a decoder)")
        glide = Decoder.load(a.glide_decoder)
        check_glide(pipe, glide)
    ensure_dataset(a.data)
    run_report(pipe, load_clip_dir(judge_dir), a.data, a.out, n=a.n, seed=a.seed, sections=sections,
               upsample=not a.no_upsample, compare_diffusers=not a.no_diffusers, glide=glide)
    print(f"wrote {Path(a.out) / 'report.md'}")
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

    model = model_dir(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    r = bench_generate(model, a.samplers.split(","), a.num_images, a.repeats, compare_diffusers=a.diffusers,
                       precisions=a.precisions.split(","))
    r["malloc"] = a.malloc
    if a.json:
        print(json.dumps(r))
    else:
        for row in r["samplers"]:
            print(f"{row['sampler']:>6} {row['precision']} {row['prior_steps']:>3}/{row['decoder_steps']:>3}/{row['upsampler_steps']:>2} steps  "
                  f"{row['seconds']:7.2f} s  {row['seconds_per_image']:6.2f} s/image"
                  + (f"  ×{row['time_vs_ddpm']} of ddpm fp32" if row["time_vs_ddpm"] is not None else ""))
        print(f"peak RSS {r['peak_rss_mb']} MB, {r['threads']} threads, {a.malloc} malloc")
        d = r["vs_diffusers"]
        if d:
            print(f"vs diffusers UnCLIPPipeline (same weights, DDPM {'/'.join(map(str, d['steps']))}): ours {d['ours_s']} s, "
                  f"diffusers {d['diffusers_s']} s, ratio {d['time_ratio']}; peak +{d['ours_peak_mb']} MB vs "
                  f"+{d['diffusers_peak_mb']} MB; max |Δ| of the images {d['max_abs_diff']:.2e}")
            if "ours_bf16_s" in d:
                print(f"ours under bf16 autocast: {d['ours_bf16_s']} s, ratio {d['bf16_time_ratio']} of diffusers' fp32; "
                      f"max |Δ| of the images {d['bf16_max_abs_diff']:.2e}")
    return 0


def _bench_serve(a) -> int:
    from unclip.serve.fuzz import GOOD, fuzz, load, start_server

    model = model_dir(a)
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
