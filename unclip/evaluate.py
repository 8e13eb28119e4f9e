"""`unclip eval`: generated vs real held-out images, judged by a model the generator never met.

The judge is a CLIP of another architecture (ConvNeXt image tower, `--preset judge`), trained with
its own seed on its own subset of the train split, used only here. Inception/FID weights are not
reachable from this machine; `frechet_distance` and `precision_recall` take any features, so an
Inception feature extractor can be plugged in where it exists.

Per held-out split (held-out images: seen concepts, unseen images; held-out concepts: never seen):
- Fréchet distance and k-NN precision/recall (Kynkäänniemi et al., k = 3) of the judge's pooled
  image features, generated vs real, with a bootstrap interval for the distance;
- judge CLIP score of image vs its prompt, and top-1/top-5 concept retrieval among all concepts,
  each beside the same number for the real images (the ceiling);
- diversity: mean pairwise judge distance (1 - cos) between samples of one concept's label,
  beside the real images of that concept (its styles, from the train split).
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FD between Gaussians fitted to feature sets a (N, F) and b (M, F), float64, no scipy:
    tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½) + |μa - μb|²."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross))


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall: the share of fake samples inside the real k-NN manifold (balls of
    each real point's k-th neighbour distance), and of real samples inside the fake manifold."""

    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(min(k + 1, len(x)), dim=1).values  # +1: the point itself is at distance 0

    def covered(points, manifold, r):
        return float((torch.cdist(points, manifold) <= r[None]).any(1).float().mean())

    real, fake = real.double(), fake.double()
    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def kid(real: torch.Tensor, fake: torch.Tensor, max_real: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018) on any features: the unbiased MMD² under the cubic
    polynomial kernel (x·y/F + 1)³ between the real images (at most `max_real`, drawn at random) and every
    generated one; returns (KID, its standard error). The error is the delete-one jackknife over the
    generated samples: the part of the uncertainty that differs between two models judged against the same
    real images (two KIDs differ beyond chance when |a − b| > 2·sqrt(se_a² + se_b²)). Unlike FD, KID has no
    sample-size bias, so its values compare across n."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"kid needs two (N, F) feature sets of one width, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real, fake = real.double(), fake.double()
    if len(real) > max_real:
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:max_real]]
    n, m, d = len(real), len(fake), real.shape[1]
    if n < 2 or m < 3:
        return float("nan"), float("nan")
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((real, real), (fake, fake), (real, fake)))
    xx = (kxx.sum() - kxx.trace()) / (n * (n - 1))
    row_yy = kyy.sum(1) - kyy.diagonal()  # (M,) each generated sample's kernel sum with the others
    col_xy = kxy.sum(0)  # (M,) each generated sample's kernel sum with the reals
    value = xx + row_yy.sum() / (m * (m - 1)) - 2 * col_xy.sum() / (n * m)
    loo = xx + (row_yy.sum() - 2 * row_yy) / ((m - 1) * (m - 2)) - 2 * (col_xy.sum() - col_xy) / (n * (m - 1))  # (M,)
    se = ((m - 1) / m * ((loo - loo.mean()) ** 2).sum()).sqrt()
    return float(value), float(se)


def bootstrap_fd(real: torch.Tensor, fake: torch.Tensor, n: int = 20, seed: int = 0) -> tuple[float, float]:
    """The basic bootstrap of the FD under resampling of the generated set: [2·FD − q97.5, 2·FD − q2.5].
    Not a confidence interval (it can exclude the estimate and does not cover the population FD; kept
    for comparison with older reports: use `kid`). (Resampling with replacement repeats samples, which biases the resampled FDs
    upwards; the basic interval reflects that bias around the estimate instead of copying it.)"""
    g = torch.Generator().manual_seed(seed)
    fd = frechet_distance(real, fake)
    vals = sorted(frechet_distance(real, fake[torch.randint(len(fake), (len(fake),), generator=g)]) for _ in range(n))
    lo, hi = vals[int(0.025 * n)], vals[min(int(math.ceil(0.975 * n)) - 1, n - 1)]
    return 2 * fd - hi, 2 * fd - lo


def mean_pairwise_distance(z: torch.Tensor) -> float:
    """Mean 1 - cos over distinct pairs of unit rows."""
    n = len(z)
    if n < 2:
        return float("nan")
    sim = z @ z.T
    return float((1 - sim).sum() / (n * (n - 1)))


class JudgeView:
    """The judge's features, embeddings and concept texts, computed in batches."""

    def __init__(self, judge, labels: dict[str, str], batch_size: int = 128):
        self.judge, self.bs = judge.eval(), batch_size
        self.concepts = sorted(labels)
        with torch.no_grad():
            self.concept_embed = torch.cat([judge.encode_text([labels[c] for c in self.concepts[i:i + 256]]).text_embed
                                            for i in range(0, len(self.concepts), 256)])  # (K, D)

    @torch.no_grad()
    def images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [-1, 1] -> pooled features (N, F), unit embeddings (N, D)."""
        feats, embs = [], []
        for i in range(0, len(x), self.bs):
            f = self.judge.image_features(x[i:i + self.bs])
            feats.append(f)
            embs.append(F.normalize(self.judge.visual_proj(f), dim=-1))
        return torch.cat(feats).float(), torch.cat(embs).float()

    @torch.no_grad()
    def texts(self, captions: list[str]) -> torch.Tensor:
        return torch.cat([self.judge.encode_text(captions[i:i + 256]).text_embed for i in range(0, len(captions), 256)])

    def ranks(self, emb: torch.Tensor, concepts: list[str]) -> torch.Tensor:
        """(N, D) unit embeddings -> (N,) rank of each one's own concept among all concepts (1 = first)."""
        target = torch.tensor([self.concepts.index(c) for c in concepts])
        sims = emb @ self.concept_embed.T  # (N, K)
        return (sims > sims.gather(1, target[:, None])).sum(1) + 1


SPLITS = ("heldout_images", "heldout_concepts")
NEAR_COPY = 8.0  # mean |difference| at 64 px on 0-255 below which two images are the same picture
# (two unrelated emoji of one style: median 55, 1st percentile 22.6; measured on the built dataset)


def leak_free(data: Path, split: str, pick: np.ndarray) -> np.ndarray:
    """(len(pick),) bool: the picked held-out images the training split does not nearly contain.

    heldout_concepts: the concept has no gender or direction twin in training (the split is drawn per
    concept, and "woman teacher" is held out while "teacher" trains). heldout_images: no training image of
    the same concept is a near copy (the split is drawn per image, so one skin tone of a concept in a
    style can be held out while its others train)."""
    from unclip.embed import image_pack

    images, idx = image_pack(data, split)
    train, tidx = image_pack(data, "train")
    if split == "heldout_concepts":
        from unclip.data.build import concept_family  # gender and direction folded: "woman teacher" meets "teacher"

        seen = {concept_family(l) for l in tidx["concept_labels"]}
        return np.array([concept_family(idx["concept_labels"][i]) not in seen for i in pick], dtype=bool)
    by_concept: dict[str, list[int]] = {}
    for i, c in enumerate(tidx["concepts"]):
        by_concept.setdefault(c, []).append(i)
    out = []
    for i in pick:
        same = by_concept.get(idx["concepts"][i], [])
        d = np.abs(np.asarray(train[same], dtype=np.int16) - np.asarray(images[i], dtype=np.int16)).mean((1, 2, 3))
        out.append(not (len(same) and d.min() < NEAR_COPY))
    return np.array(out, dtype=bool)


def leak_free_summary(m: dict, mask: np.ndarray) -> dict:
    """A split's per-prompt numbers over the leak-free prompts only (see leak_free)."""
    rank, clip = np.asarray(m["per_prompt"]["concept_rank"])[mask], np.asarray(m["per_prompt"]["clip_score"])[mask]
    if not mask.any():
        return {"prompts": 0}
    return {"prompts": int(mask.sum()), "clip_score": float(clip.mean()), "top1": float((rank <= 1).mean()),
            "top5": float((rank <= 5).mean()), "concept_mrr": float((1 / rank).mean())}


def judge_view(judge, data: Path) -> "JudgeView":
    from unclip.embed import image_pack

    labels: dict[str, str] = {}
    for s in ("train",) + SPLITS:
        _, idx = image_pack(data, s)
        labels.update(zip(idx["concepts"], idx["concept_labels"]))
    return JudgeView(judge, labels)


def pick_prompts(idx: dict, count: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[str]]:
    """min(n, count) images of a split drawn by `rng` (sorted rows), each one's first caption and its concept:
    `evaluate`'s prompts, and anything that must use the same ones (scripts/rerank_check.py)."""
    first = np.asarray(idx["caption_offsets"][:-1])
    pick = np.sort(rng.choice(count, size=min(n, count), replace=False))
    return pick, [idx["captions"][first[i]] for i in pick], [idx["concepts"][i] for i in pick]


def evaluate(pipe, judge, data: Path, n: int = 64, diversity_prompts: int = 8, diversity_samples: int = 4,
             seed: int = 0, batch: int = 8, generate_kwargs: dict | None = None, progress: bool = True,
             splits=SPLITS, generate=None, reconstructions: int = 0, warmup: bool = False) -> dict:
    """Generated vs real held-out images under the judge; see the module docstring.

    `generate(prompts, generator) -> (B, 3, H, W) in [-1, 1]` replaces the pipeline's text-to-image
    call (the CLIP-guided baseline, for one); `judge` may be a JudgeView already built. warmup: one
    untimed call on the first batch before the timed ones (seconds_per_image without first-call costs,
    for comparing times)."""
    import time

    from tqdm.auto import tqdm

    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack

    kw = generate_kwargs or {}
    generate = generate or (lambda prompts, g: pipe(prompts, 1, generator=g, output_type="pt", **kw).images * 2 - 1)
    view = judge if isinstance(judge, JudgeView) else judge_view(judge, data)
    rng = np.random.default_rng(seed)
    report = {"n": n, "seed": seed, "generate": {k: v for k, v in kw.items() if not callable(v)}, "splits": {}}
    seconds, made = 0.0, 0
    for split in splits:
        images, idx = image_pack(data, split)
        pick, prompts, concepts = pick_prompts(idx, len(images), n, rng)
        fake = []
        bar = tqdm(total=len(prompts), desc=f"generate {split}", disable=not progress)
        for b in range(0, len(prompts), batch):
            if warmup and made == 0 and b == 0:
                generate(prompts[:batch], torch.Generator().manual_seed(seed * 1000))  # untimed, output dropped
            g = torch.Generator().manual_seed(seed * 1000 + b)
            t0 = time.perf_counter()
            out = generate(prompts[b:b + batch], g)  # (B, 3, H, W) in [-1, 1]
            seconds, made = seconds + time.perf_counter() - t0, made + len(out)
            fake.append(out)
            bar.update(len(out))
        bar.close()
        fake = torch.cat(fake)
        real_all = uint8_to_tensor(np.asarray(images))  # every real image of the split, for the statistics
        real_pick = real_all[torch.from_numpy(pick)]
        f_fake, e_fake = view.images(fake)
        f_real, e_real = view.images(real_all)
        _, e_real_pick = view.images(real_pick)
        t = view.texts(prompts)
        fd = frechet_distance(f_real, f_fake)
        lo, hi = bootstrap_fd(f_real, f_fake)
        kid_value, kid_se = kid(f_real, f_fake, seed=seed)
        prec, rec = precision_recall(f_real, f_fake)
        rank, rank_real = view.ranks(e_fake, concepts), view.ranks(e_real_pick, concepts)
        clip_score, clip_score_real = (e_fake * t).sum(-1), (e_real_pick * t).sum(-1)  # (N,)
        report["splits"][split] = {
            # fd_ci95: the basic bootstrap over the generated set; it need not hold the estimate and does not
            # cover the population FD (FD's small-sample bias): compare FDs at equal n only, and use KID's spread
            "prompts": len(prompts), "real_images": len(real_all), "fd": fd, "fd_ci95": [lo, hi],
            "kid": kid_value, "kid_se": kid_se,
            "precision": prec, "recall": rec,
            "clip_score": float(clip_score.mean()), "clip_score_se": _se(clip_score),
            "clip_score_real": float(clip_score_real.mean()),
            "top1": float((rank <= 1).float().mean()), "top5": float((rank <= 5).float().mean()),
            "top1_real": float((rank_real <= 1).float().mean()), "top5_real": float((rank_real <= 5).float().mean()),
            "concept_mrr": float((1 / rank).mean()), "concept_mrr_real": float((1 / rank_real).mean()),
            # per prompt, in order, for a paired comparison of two models on the same prompts and seeds (`paired`)
            "per_prompt": {"prompts": prompts, "clip_score": clip_score.tolist(), "concept_rank": rank.tolist()},
        }
        m = report["splits"][split]
        clean = leak_free(data, split, pick) if split in SPLITS else None
        if clean is not None:
            m["per_prompt"]["leak_free"] = clean.tolist()
            real = {"concept_rank": rank_real.tolist(), "clip_score": clip_score_real.tolist()}
            m["leak_free"] = {**leak_free_summary(m, clean), **{f"{k}_real": v for k, v in leak_free_summary(
                {"per_prompt": real}, clean).items() if k != "prompts"}}
        report["splits"][split]["images"] = fake  # kept for grids; dropped before JSON (see strip)
    report["seconds_per_image"] = seconds / max(made, 1)
    if diversity_prompts:
        report["diversity"] = diversity(view, data, diversity_prompts, diversity_samples, seed, generate)
    if reconstructions:
        dec = decode_kwargs(kw)
        report["reconstruction"] = reconstruction(
            view, data, reconstructions, seed, lambda z, caps, g: pipe.from_embeds(
                z, caps, generator=g, output_type="pt", **dec).images * 2 - 1, pipe.clip)
    return report


@torch.no_grad()
def reconstruction(view: JudgeView, data: Path, n: int, seed: int, decode, clip, batch: int = 8) -> dict:
    """The decoder alone, without the prior: held-out images decoded from their own z_i (the CLIP
    stage's) and caption, `decode(z_i, captions, generator) -> (B, 3, H, W) in [-1, 1]`. Under the judge:
    mean cosine between each reconstruction and its source, and top-1/top-5 retrieval of the source
    among the n sources (a decoder that draws what z_i holds finds it; chance is 1/n)."""
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack

    images, idx = image_pack(data, "heldout_images")
    pick = np.sort(np.random.default_rng(seed + 2).choice(len(images), size=min(n, len(images)), replace=False))
    real = uint8_to_tensor(np.asarray(images[pick]))  # (n, 3, H, W) in [-1, 1]
    caps = [idx["captions"][idx["caption_offsets"][i]] for i in pick]
    out = decode_batches(decode, clip.encode_image(real), caps, seed, batch)
    return source_retrieval(view.images(out)[1], view.images(real)[1])


def decode_batches(decode, z: torch.Tensor, captions: list[str], seed: int, batch: int = 8) -> torch.Tensor:
    """`decode(z_i, captions, generator)` over z (n, D) in batches, each batch seeded from `seed` and its
    offset (the same images whatever else runs) -> (n, 3, H, W)."""
    return torch.cat([decode(z[b:b + batch], captions[b:b + batch], torch.Generator().manual_seed(seed * 1000 + b))
                      for b in range(0, len(z), batch)])


def source_retrieval(rec: torch.Tensor, src: torch.Tensor) -> dict:
    """Unit judge embeddings of reconstructions (n, D) and their sources (n, D) -> mean cosine of each pair and
    top-1/top-5 retrieval of each one's source among the n (chance 1/n)."""
    sim = rec @ src.T  # (n, n): reconstruction i vs source j
    target = torch.arange(len(src))
    top = sim.topk(min(5, len(src)), dim=1).indices
    return {"images": len(src), "cosine": float(sim.diag().mean()),
            "top1": float((top[:, 0] == target).float().mean()), "top5": float((top == target[:, None]).any(1).float().mean())}


def decode_kwargs(kw: dict) -> dict:
    """The decoding part of a pipeline call's kwargs for `from_embeds`, with the sampler's own default
    steps as the pipeline's call takes them."""
    from unclip.sampling import DEFAULT_STEPS

    steps = DEFAULT_STEPS[kw.get("sampler", "ddim")]
    return {"decoder_steps": steps["decoder"], "upsampler_steps": steps["upsampler"],
            **{k: kw[k] for k in ("decoder_steps", "upsampler_steps", "decoder_guidance_scale", "sampler", "upsample")
               if k in kw}}


def own_embeds_generate(pipe, data: Path, splits=SPLITS, **kw):
    """An oracle prior, for the conditioning ablation: `generate(prompts, generator)` for `evaluate`
    that decodes each prompt's own held-out image's z_i (the CLIP stage's) with that caption. What the
    decoder draws from a perfect z_i bounds what any prior can reach. `kw`: the pipeline call's kwargs
    (its decoding part is used, see `decode_kwargs`)."""
    dec = decode_kwargs(kw)
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack

    packs = [image_pack(data, s) for s in splits]
    source, shared = {}, set()  # first caption -> (images, row): the caption evaluate() prompts with
    for images, idx in packs:
        for i, off in enumerate(idx["caption_offsets"][:-1]):
            caption = idx["captions"][off]
            if caption in source:
                shared.add(caption)
            source.setdefault(caption, (images, i))

    @torch.no_grad()
    def generate(prompts: list[str], generator) -> torch.Tensor:
        missing = [p for p in prompts if p not in source]
        if missing:
            raise ValueError(f"no held-out image has the caption {missing[0]!r}")
        ambiguous = [p for p in prompts if p in shared]
        if ambiguous:
            raise ValueError(f"several held-out images have the caption {ambiguous[0]!r}: the oracle prior cannot "
                             "tell which image's z_i a prompt stands for (give the images distinct captions)")
        real = uint8_to_tensor(np.stack([np.asarray(source[p][0][source[p][1]]) for p in prompts]))
        z_i = pipe.clip.encode_image(real)  # (B, d)
        return pipe.from_embeds(z_i, prompts, generator=generator, output_type="pt", **dec).images * 2 - 1

    return generate


PAIRED = {"clip_score": lambda m: np.asarray(m["clip_score"]),
          "concept_mrr": lambda m: 1 / np.asarray(m["concept_rank"], dtype=float),
          "top5": lambda m: (np.asarray(m["concept_rank"]) <= 5).astype(float)}


def paired(base: dict, new: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Per split and metric, new minus base over the same prompts (and seeds): the mean difference and a
    95% bootstrap interval over prompts. Pairing removes the prompt-to-prompt spread that two separate
    confidence intervals carry, so it can tell two close models apart at a small n."""
    check_same_draw(base, new, "prompts")
    rng, out = np.random.default_rng(seed), {}
    for split, m in new["splits"].items():
        if split not in base["splits"]:
            continue
        a, b = base["splits"][split].get("per_prompt"), m.get("per_prompt")
        if a is None or b is None:
            raise ValueError("a report has no per-prompt results (made before they were recorded): "
                             "rerun `unclip eval --json` for it")
        if a["prompts"] != b["prompts"]:
            raise ValueError(f"{split}: the reports hold different prompts; use the same --n, --seed and data")
        n = len(b["prompts"])
        groups = {"": (np.arange(n), rng.integers(0, n, size=(resamples, n)))}  # suffix: (prompts, resampled rows)
        if "leak_free" in a and "leak_free" in b and any(b["leak_free"]):  # the same comparison, leak-free prompts only
            keep = np.flatnonzero(b["leak_free"])
            groups["_leak_free"] = (keep, rng.choice(keep, size=(resamples, len(keep))))
        out[split] = {}
        for name, values in PAIRED.items():
            d = values(b) - values(a)  # (N,)
            for suffix, (rows, boot) in groups.items():
                out[split][name + suffix] = mean_interval(d[rows], d[boot])
    return out


def check_same_draw(base: dict, new: dict, what: str) -> None:
    """Two reports to pair were made with the same seed and n (the same `what` and noise), else a clear error."""
    if base.get("seed") != new.get("seed") or base.get("n") != new.get("n"):
        raise ValueError(f"the reports were made with other seeds or n (seed {base.get('seed')} vs {new.get('seed')}, "
                         f"n {base.get('n')} vs {new.get('n')}): a paired comparison needs the same {what} and noise")


def mean_interval(d: np.ndarray, resampled: np.ndarray) -> dict:
    """Paired differences d (N,) and bootstrap resamples of them (R, N) -> their mean and the 95% interval
    of the resampled means."""
    means = resampled.mean(1)
    return {"mean": float(d.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def strip(report: dict) -> dict:
    """The report without its image tensors (for JSON)."""
    out = {**report, "splits": {k: {kk: vv for kk, vv in v.items() if kk != "images"} for k, v in report["splits"].items()}}
    return out


def diversity(view: JudgeView, data: Path, prompts: int, samples: int, seed: int, generate) -> dict:
    """Mean pairwise judge distance within a prompt's samples, beside within a concept's real images."""
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack

    images, idx = image_pack(data, "train")  # the concepts with the most real images (styles) to compare with
    by_concept: dict[str, list[int]] = {}
    for i, c in enumerate(idx["concepts"]):
        by_concept.setdefault(c, []).append(i)
    multi = sorted(c for c, ii in by_concept.items() if len(ii) >= 2)
    rng = np.random.default_rng(seed + 1)
    chosen = [multi[i] for i in rng.choice(len(multi), size=min(prompts, len(multi)), replace=False)]
    gen, real = [], []
    for j, c in enumerate(chosen):
        label = idx["concept_labels"][by_concept[c][0]]
        out = generate([label] * samples, torch.Generator().manual_seed(seed * 7919 + j))
        gen.append(mean_pairwise_distance(view.images(out)[1]))
        real.append(mean_pairwise_distance(view.images(uint8_to_tensor(np.asarray(images[by_concept[c]])))[1]))
    return {"prompts": len(chosen), "samples": samples, "generated": float(np.nanmean(gen)) if gen else None,
            "generated_se": _se(torch.tensor(gen)) if gen else None, "per_prompt": gen,
            "real": float(np.nanmean(real)) if real else None}


def _se(x: torch.Tensor) -> float:
    """Standard error of a mean over independent values (prompts); nan below two values."""
    x = x[~x.isnan()].double()
    return float(x.std() / math.sqrt(len(x))) if len(x) >= 2 else float("nan")
