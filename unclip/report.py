"""`unclip report`: the evaluation and the paper's ablations on one model, as docs/report.md + plots.

Sections (each an `evaluate` run under the judge, same prompts and seeds):
- headline: the default pipeline on both held-out splits;
- conditioning: the decoder given the prior's z_i vs z_t used as z_i vs no z_i (caption only), and the
  image's own z_i (an oracle prior: the bound a perfect prior reaches; not in the paper);
- guidance: quality and diversity vs decoder guidance scale, unCLIP vs the same decoder conditioned
  on the caption only, and (with `glide`) vs a separately trained caption-only decoder of the same size
  (GLIDE-like: `unclip train decoder --option image_drop=1`);
- priors: diffusion vs autoregressive prior (when the model has one), quality and seconds per image;
- samplers: DDPM, DDIM and DPM-Solver++ at their default steps, quality vs seconds per image;
- clip_guided: the CLIP-guided baseline vs unCLIP, with a repetition (tiling) score.
"""

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

SECTIONS = ("headline", "conditioning", "guidance", "priors", "samplers", "clip_guided")


def tiling_score(images: torch.Tensor, exclude: float = 0.25) -> float:
    """Mean over images of the largest normalised autocorrelation of the grey image at shifts of at
    least `exclude` of its side (Euclidean, in side units): near 1 for a motif repeated across the
    image, low for one object on a background."""
    g = images.float().mean(1)  # (B, H, W)
    g = g - g.mean((1, 2), keepdim=True)
    f = torch.fft.rfft2(g)
    ac = torch.fft.irfft2(f * f.conj(), s=g.shape[-2:])  # circular autocorrelation
    ac = ac / ac[:, :1, :1].clamp(min=1e-8)
    h, w = g.shape[-2:]
    dy = torch.minimum(torch.arange(h), h - torch.arange(h))[:, None]
    dx = torch.minimum(torch.arange(w), w - torch.arange(w))[None]
    far = (dy / h) ** 2 + (dx / w) ** 2 >= exclude**2
    return float(ac[:, far].max(1).values.mean())


def _row(name: str, r: dict, split: str) -> dict:
    m = r["splits"][split]
    out = {"setting": name, "fd": m["fd"], "kid": m["kid"], "kid_se": m["kid_se"], "precision": m["precision"],
           "recall": m["recall"], "clip_score": m["clip_score"], "clip_score_se": m["clip_score_se"], "top1": m["top1"], "top5": m["top5"],
           "seconds_per_image": r["seconds_per_image"], "tiling": tiling_score(m["images"])}
    if "diversity" in r:
        out["diversity"] = r["diversity"]["generated"]
        out["diversity_per_prompt"] = r["diversity"]["per_prompt"]  # the same prompts and seeds in every row: paired
        out["diversity_real"] = r["diversity"]["real"]
    return out


def run_report(pipe, judge, data: Path, out: Path, n: int = 16, seed: int = 0, sections=SECTIONS,
               diversity_prompts: int = 4, diversity_samples: int = 4, upsample: bool = True, compare_diffusers: bool = True,
               glide=None, log=print) -> dict:
    """upsample=False judges (and times) the decoder's images: the judge sees 64 px either way.
    compare_diffusers: the samplers section also runs diffusers' UnCLIPPipeline (DDPM 25/25/7, always
    upsampled; prior guidance 4 and this model's decoder guidance, as our rows) on this model's weights
    exported to its layout. glide: a caption-only decoder of the same size (`check_glide`), trained
    separately (`--option image_drop=1`): the guidance section adds it beside this decoder with z_i dropped."""
    from unclip.evaluate import evaluate, judge_view, own_embeds_generate, strip

    view = judge_view(judge, data)
    out = Path(out)
    (out / "report").mkdir(parents=True, exist_ok=True)
    from unclip.embed import image_pack

    results: dict = {"n": n, "seed": seed, "model": pipe.name, "upsample": upsample, "weights": fingerprints(pipe),
                     "settings": {"judge": module_hash(judge),
                                  "data": image_pack(data, "heldout_concepts")[1]["build_id"],
                                  "diversity": [diversity_prompts, diversity_samples], "diffusers": compare_diffusers,
                                  "decoder_guidance": pipe.default_decoder_guidance(),
                                  "glide": module_hash(glide)},
                     "sections": {}}
    kept = keep_sections(out / "report" / "results.json", results, sections)
    if kept:
        log(f"keeping the report's other sections ({', '.join(kept)}): same weights and settings")
    split = "heldout_concepts"

    def ev(name, splits=(split,), div=diversity_prompts, generate=None, warmup=False, on=pipe, **kw):
        t = time.time()
        r = evaluate(on, view, data, n=n, seed=seed, splits=splits, diversity_prompts=div,
                     diversity_samples=diversity_samples, generate_kwargs={"upsample": upsample, **kw}, generate=generate,
                     progress=False, warmup=warmup)
        log(f"  {name}: {time.time() - t:.0f} s")
        return r

    if "headline" in sections:
        log("headline")
        r = ev("default", splits=("heldout_images", "heldout_concepts"))
        results["sections"]["headline"] = strip(r)
        _grid(r["splits"][split]["images"], out / "report" / "headline.png")
    if "conditioning" in sections:
        log("conditioning")
        rows = [_row(name, ev(name, prior=prior, div=0), split)
                for name, prior in (("caption only (no z_i)", "none"), ("z_t as z_i", "text"), ("prior z_i (unCLIP)", "diffusion"))]
        oracle = own_embeds_generate(pipe, data, upsample=upsample)  # not the paper's: the bound a perfect prior reaches
        rows.append(_row("the image's own z_i (oracle prior)", ev("oracle", div=0, generate=oracle), split))
        results["sections"]["conditioning"] = rows
    if "guidance" in sections:
        log("guidance")
        rows = []
        settings = [("unCLIP", pipe, "diffusion"), ("caption-only decoder", pipe, "none")]
        if glide is not None:
            settings.append((GLIDE, pipe.with_decoder(glide), "none"))
        shown = []  # at the model's own guidance, a row of samples per setting
        for scale in sorted({1.0, 3.0, 8.0, pipe.default_decoder_guidance()}):  # and the model's own
            for name, on, prior in settings:
                r = ev(f"{name} @ {scale}", prior=prior, on=on, decoder_guidance_scale=scale)
                rows.append({"decoder_guidance": scale, **_row(name, r, split)})
                if scale == pipe.default_decoder_guidance():
                    shown.append(r["splits"][split]["images"][:8])
        if glide is not None:  # unCLIP, this decoder without z_i, the GLIDE-like decoder: the same prompts per column
            _grid(torch.cat(shown), out / "report" / "glide.png", cols=len(shown[0]), rows=len(shown))
        results["sections"]["guidance"] = rows
        _plot_guidance(rows, out / "report" / "guidance.png")
    if "priors" in sections and pipe.ar_prior is None:
        results.setdefault("skipped", {})["priors"] = "this model has no autoregressive prior (ar_prior_config.json)"
    if "priors" in sections and pipe.ar_prior is not None:
        log("priors")
        results["sections"]["priors"] = [_row(name, ev(name, prior=prior, div=0), split)
                                         for name, prior in (("diffusion prior", "diffusion"), ("autoregressive prior", "ar"))]
    if "samplers" in sections:
        log("samplers")
        from unclip.sampling import DEFAULT_STEPS

        rows = []
        for sampler in ("ddpm", "ddim", "dpm++"):
            st = DEFAULT_STEPS[sampler]
            rows.append({"sampler": sampler, "steps": f"{st['prior']}/{st['decoder']}/{st['upsampler']}",
                         **_row(sampler, ev(sampler, sampler=sampler, div=0, warmup=True), split)})
            if not upsample:  # diffusers always upsamples: our time to 256 px too, on the same prompts and seeds
                rows[-1]["seconds_per_image_256"] = ev(f"{sampler} to 256 px", sampler=sampler, div=0, warmup=True,
                                                       upsample=True)["seconds_per_image"]
        if compare_diffusers:
            guidance = pipe.default_decoder_guidance()
            with diffusers_generate(pipe, guidance) as theirs:  # the same guidance as our rows
                rows.append({"sampler": "diffusers UnCLIPPipeline (ddpm)", "steps": "25/25/7", "decoder_guidance": guidance,
                             **_row("diffusers", ev("diffusers", generate=theirs, div=0, warmup=True), split)})
            for r in rows[:-1]:
                r["decoder_guidance"] = guidance
        results["sections"]["samplers"] = rows
        _plot_samplers(rows, out / "report" / "samplers.png")
    if "clip_guided" in sections:
        log("clip_guided")

        def guided(prompts, g):
            return pipe.clip_guided(prompts, 1, upsample=upsample, generator=g, output_type="pt").images * 2 - 1

        r_g, r_u = ev("CLIP-guided", generate=guided, div=0), ev("unCLIP", div=0)
        results["sections"]["clip_guided"] = [_row("CLIP-guided (caption-conditioned decoder)", r_g, split),
                                              _row("unCLIP", r_u, split)]
        _grid(torch.cat([r_g["splits"][split]["images"][:8], r_u["splits"][split]["images"][:8]]),
              out / "report" / "clip_guided.png", cols=8)
    (out / "report" / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(render_markdown(results))
    return results


STAGES = ("clip", "prior", "decoder", "upsampler", "ar_prior")
GLIDE = "GLIDE-like decoder"  # the guidance section's row of a separately trained caption-only decoder


def check_glide(pipe, decoder) -> None:
    """The GLIDE-like comparison needs a caption-only decoder (trained with image_drop 1) of this model's
    decoder's size; anything else is a clear error."""
    if pipe.decoder is None:
        raise ValueError("this model has no decoder (decoder_config.json) to compare a GLIDE-like decoder with")
    if not decoder.caption_only:
        raise ValueError(f"the GLIDE-like decoder must be caption-only (trained with `--option image_drop=1`); "
                         f"this one was trained with image_drop {decoder.config.image_drop}")
    if not decoder.same_size(pipe.decoder):
        raise ValueError("the GLIDE-like decoder must have this model's decoder architecture (same size); "
                         "train it with `unclip train decoder --init-from MODEL --option image_drop=1`")


def module_hash(module) -> str | None:
    """A short hash of a module's weights (None for no module)."""
    import hashlib

    if module is None:
        return None
    h = hashlib.sha1()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def fingerprints(pipe) -> dict[str, str | None]:
    """Each stage's weights hash (None: no such stage): which model a stored section was measured on."""
    return {stage: module_hash(getattr(pipe, stage, None)) for stage in STAGES}


def keep_sections(path: Path, results: dict, sections) -> list[str]:
    """Run for some sections only: copy the others from the stored results when they were measured with
    the same settings (n, seed, upsampling, judge, data, diversity, peers, default guidance) on the same
    weights (the AR prior's only matters to its own section; the GLIDE-like decoder's only to the guidance
    section, which a run without one keeps as measured, its decoder's hash carried over)."""
    if set(sections) >= set(SECTIONS) or not path.exists():
        return []
    old = json.loads(path.read_text())
    if any(old.get(k) != results[k] for k in ("n", "seed", "model", "upsample")) or \
            _but_glide(old.get("settings", {})) != _but_glide(results["settings"]):
        return []
    old_glide, glide = old["settings"].get("glide"), results["settings"].get("glide")
    same = {k for k in STAGES if k in old.get("weights", {}) and old["weights"][k] == results["weights"][k]}
    core = {"clip", "prior", "decoder", "upsampler"}
    kept = []
    for key in SECTIONS:
        if key in sections or not core <= same or (key == "priors" and "ar_prior" not in same):
            continue
        if key == "guidance" and glide is not None and glide != old_glide:
            continue
        if key in old["sections"]:
            results["sections"][key] = old["sections"][key]
            kept.append(key)
        elif key in old.get("skipped", {}):
            results.setdefault("skipped", {})[key] = old["skipped"][key]
            kept.append(key)
    if "guidance" in kept:  # measured with the stored GLIDE-like decoder, whether or not this run has one
        results["settings"]["glide"] = old_glide
    return kept


def _but_glide(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "glide"}


@contextmanager
def diffusers_generate(pipe, decoder_guidance: float = 8.0):
    """`generate(prompts, generator)` for `evaluate` by diffusers' UnCLIPPipeline on `pipe`'s weights, at
    prior guidance 4 (its default and ours) and the given decoder guidance (its default: 8)."""
    import tempfile

    from unclip.interop import diffusers_pipeline, export_diffusers

    with tempfile.TemporaryDirectory() as tmp:
        export_diffusers(pipe.with_decoder(pipe.decoder.base()), Path(tmp) / "m")  # diffusers has no high-noise expert
        theirs = diffusers_pipeline(Path(tmp) / "m")
    theirs.set_progress_bar_config(disable=True)

    def generate(prompts, g):
        out = theirs(prompts, num_images_per_prompt=1, prior_num_inference_steps=25, decoder_num_inference_steps=25,
                     super_res_num_inference_steps=7, prior_guidance_scale=4.0, decoder_guidance_scale=decoder_guidance,
                     generator=g, output_type="np").images  # (B, H, W, 3) in [0, 1]
        return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1

    yield generate


def _grid(images: torch.Tensor, path: Path, cols: int = 8, rows: int = 2) -> None:
    from unclip.images import grid, to_output

    grid(to_output(images[: rows * cols], "pil"), cols=cols).save(path)


def _plot_guidance(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    for name in dict.fromkeys(r["setting"] for r in rows):
        rr = [r for r in rows if r["setting"] == name]
        ax[0].plot([r["decoder_guidance"] for r in rr], [r["fd"] for r in rr], "o-", label=name)
        ax[1].plot([r["decoder_guidance"] for r in rr], [r.get("diversity") for r in rr], "o-", label=name)
    ax[0].set(xlabel="decoder guidance scale", ylabel="judge FD (lower is better)")
    ax[1].set(xlabel="decoder guidance scale", ylabel="diversity (mean pairwise 1 - cos)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_samplers(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r in rows:
        ax.plot(r["seconds_per_image"], r["fd"], "o")  # a point estimate (rows share n, so they compare)
        label = f"{r['sampler'].replace(' UnCLIPPipeline', '')} {r['steps']}"
        ax.annotate(label, (r["seconds_per_image"], r["fd"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlim(0, 1.3 * max(r["seconds_per_image"] for r in rows))  # room for the labels inside the axes
    ax.set(xlabel="seconds per image (this CPU)", ylabel="judge FD (same n for every row)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(rows: list[dict], keys: list[str]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    keys = [k for k in keys if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


METRICS = ["fd", "fd_lo", "fd_hi", "kid", "kid_std", "kid_se", "precision", "recall", "clip_score", "clip_score_se", "top1", "top5", "diversity",
           "seconds_per_image", "seconds_per_image_256", "tiling"]  # (fd_lo/fd_hi, kid_std: stored older reports)


def render_markdown(results: dict) -> str:
    from unclip.claims import verdicts

    s = results["sections"]
    md = [f"# Evaluation report: {results['model']}", "",
          f"Generated by `unclip report` (n = {results['n']} prompts per split, seed {results['seed']}"
          + ("" if results.get("upsample", True) else "; decoder images, not upsampled: the judge sees 64 px either way")
          + "). Judge: a ConvNeXt "
          "CLIP trained separately for evaluation only (see README, Evaluating). Metrics on the held-out-concepts split "
          "unless noted; fd: Fréchet distance of the judge's features, biased by n (compare rows of one report "
          "only); kid ± kid_se: kernel distance (unbiased) and its standard error over the generated images (jackknife), "
          "what separates two rows (apart when they differ by more than 2·sqrt(se² + se²)); clip_score_se: its standard "
          "error over prompts; "
          "tiling: repetition score (higher = more repeated motifs). Reports before KID show fd_lo/fd_hi: a basic "
          "bootstrap over the generated set that need not hold the estimate and does not cover the population FD: "
          "not a confidence interval.", ""]
    if "headline" in s:
        md += ["## Headline", ""]
        rows = [{"split": k, **{m: v for m, v in r.items() if not isinstance(v, (list, dict))},
                 **({"fd_lo": r["fd_ci95"][0], "fd_hi": r["fd_ci95"][1]} if "kid" not in r else {})}
                for k, r in s["headline"]["splits"].items()]
        md += [_table(rows, ["split", "fd", "fd_lo", "fd_hi", "kid", "kid_std", "kid_se", "precision", "recall", "clip_score",
                             "clip_score_real", "top1", "top1_real", "top5", "top5_real", "concept_mrr", "concept_mrr_real"]), ""]
        clean = {k: r["leak_free"] for k, r in s["headline"]["splits"].items() if r.get("leak_free", {}).get("prompts")}
        if clean:
            md += ["Leak-free prompts only (no near copy or gender/direction twin in training; README, Evaluating):", "",
                   _table([{"split": k, **v} for k, v in clean.items()],
                          ["split", "prompts", "clip_score", "clip_score_real", "top5", "top5_real", "concept_mrr",
                           "concept_mrr_real"]), ""]
        d = s["headline"].get("diversity")
        if d:
            md += [f"Diversity: generated {d['generated']:.3f}, real {d['real']:.3f}.", ""]
        md += ["![samples](report/headline.png)", ""]
    for key, title, first in (("conditioning", "Decoder conditioning (paper: the prior's z_i is best)", "setting"),
                              ("guidance", "Guidance: quality and diversity (paper: unCLIP keeps more diversity)", "decoder_guidance"),
                              ("priors", "Diffusion vs autoregressive prior", "setting"),
                              ("samplers", "Samplers at their default steps", "sampler"),
                              ("clip_guided", "CLIP-guided baseline vs unCLIP", "setting")):
        if key in results.get("skipped", {}):
            md += [f"## {title}", "", f"Not run: {results['skipped'][key]}.", ""]
        if key in s:
            lead = [first] + (["setting"] if first == "decoder_guidance" else []) + (["steps"] if key == "samplers" else [])
            md += [f"## {title}", "", _table(s[key], lead + METRICS), ""]
            if key in ("guidance", "samplers", "clip_guided"):  # the sections with a figure
                md += [f"![{key}](report/{key}.png)", ""]
            if key == "guidance" and any(r["setting"] == GLIDE for r in s[key]):
                md += [f"Samples at guidance {results['settings']['decoder_guidance']:g}, one prompt per column: unCLIP, "
                       "this decoder without z_i, and the GLIDE-like decoder (a caption-only decoder of the same size "
                       "trained separately on the same data).", "", "![GLIDE-like](report/glide.png)", ""]
    lines = verdicts(s, upsample=results.get("upsample", True))
    if lines:
        md += ["## The paper's claims at this scale", "",
               "Each verdict from the tables above (held-out concepts). A measure counts only when two rows differ "
               "beyond chance (by more than twice the standard error of their difference: KID's jackknife, CLIP "
               "score's over prompts, diversity paired over prompts): \"holds\" when every measure named goes the "
               "claim's way, \"does not hold\" when every one goes against it, \"not separated\" when none is apart, "
               f"\"mixed\" otherwise. At n = {results['n']} prompts only large differences separate.", ""]
        md += [f"- {line}" for line in lines] + [""]
    return "\n".join(md)
