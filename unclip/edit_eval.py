"""`unclip eval-edits`: the paper's image manipulations (its section 3) measured under the judge.

z_i makes three edits possible (the paper's figures 3-5). Each is judged here on n held-out images (the
heldout_images split: concepts the model has seen, images it has not) by the judge CLIP the generator never
met (`evaluate`), at the decoder's resolution:

- variations (`UnCLIPPipeline.variations`, k per image; DDIM η = 1 from fresh noise as `unclip vary`, or
  another η, or from the image's inverted x_T as `vary --inversion`): judge cosine to the source beside
  the cosine between two unrelated sources (the floor); the source's concept in the variation's top-5
  concepts and the variation's judged style equal to the source's, beside the sources' own; diversity
  (1 - cos) among one image's variations.
- interpolations (`interpolate`, image i with image i + n/2, F frames, z_i and the inverted x_T slerped):
  evenness, the largest judge step between neighbouring frames over the mean step (1: even; F - 1: all in
  one jump); monotone, the share of steps that move towards the end image (`path_metrics`); the endpoints'
  cosine to their sources; plausibility, the judge precision of the interior frames against the real
  images (inside their k-NN manifold: emoji-like). Beside a pixel cross-fade of the same two sources.
- text diffs (`text_diff` from "<concept>, <its style> style" towards the same concept in another style,
  θ = 0 … 0.5): per θ, the share judged as the asked style and as the source's, the source's concept in
  the top-5, and the cosine to the source.

Styles are judged zero-shot among the dataset's styles (`judged_styles`); the real sources' own accuracy
is reported as that classifier's ceiling.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unclip.evaluate import JudgeView, check_same_draw, mean_interval, mean_pairwise_distance, precision_recall

STYLE_TEMPLATES = ("{label}, {style} style", "a {style} emoji of {label}")  # the captions' own phrasings (data.captions)
THETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
SECTIONS = ("variations", "interpolations", "text_diffs")


def style_names() -> dict[str, tuple[str, ...]]:
    """Style key (a source's `style`) -> the names its captions use (sources.json)."""
    from unclip.data.sources import all_sources

    return {s.style: s.style_names for s in all_sources().values()}


@torch.no_grad()
def judged_styles(view, emb: torch.Tensor, labels: list[str], styles: list[str], names: dict) -> torch.Tensor:
    """Unit judge embeddings (N, D) of images of the concepts `labels` (N,) -> (N,) index into `styles` of
    the one the judge finds closest. A style's text is the mean unit embedding of its names in
    STYLE_TEMPLATES with the image's concept label: a zero-shot classifier among the dataset's styles."""
    table: dict[str, torch.Tensor] = {}
    out = []
    for e, label in zip(emb, labels):
        if label not in table:
            caps = [t.format(label=label, style=n) for s in styles for t in STYLE_TEMPLATES for n in names[s]]
            t = F.normalize(view.texts(caps).float(), dim=-1)  # (sum of S_k, D), style-major
            sizes = [len(STYLE_TEMPLATES) * len(names[s]) for s in styles]
            table[label] = F.normalize(torch.stack([c.mean(0) for c in t.split(sizes)]), dim=-1)  # (S, D)
        out.append(int((table[label] @ e.float()).argmax()))
    return torch.tensor(out, dtype=torch.long)


def path_metrics(frames: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict:
    """Unit embeddings of a path's frames (F, D) and of its two sources (D,) -> evenness (largest step
    between neighbouring frames over the mean step, 1 = even), monotone (share of steps along which
    cos(frame, b) - cos(frame, a) rises; a step that changes nothing does not) and the endpoints' cosine
    to their sources."""
    if len(frames) < 2:
        raise ValueError(f"a path needs at least 2 frames, got {len(frames)}")
    step = 1 - (frames[:-1] * frames[1:]).sum(-1)  # (F - 1,)
    progress = frames @ b - frames @ a  # (F,)
    mean = float(step.mean())
    return {"evenness": float(step.max()) / mean if mean > 0 else 1.0,
            "monotone": float((progress[1:] - progress[:-1] > 1e-6).float().mean()),  # (above rounding)
            "start_cosine": float(frames[0] @ a), "end_cosine": float(frames[-1] @ b)}


def _styles_of(data: Path, names: dict) -> list[str]:
    from unclip.embed import image_pack

    styles = sorted({s for split in ("train", "heldout_images") for s in image_pack(data, split)[1]["styles"]})
    unnamed = [s for s in styles if s not in names]
    if unnamed:
        raise ValueError(f"style {unnamed[0]!r} of the dataset has no names in sources.json: its styles cannot be judged")
    return styles


def _pt(out) -> torch.Tensor:
    return out.images * 2 - 1  # output_type "pt" is in [0, 1]


@dataclass
class Sources:
    """The n held-out images an evaluation edits, and what the judge makes of them."""

    view: JudgeView
    images: torch.Tensor  # (n, 3, H, W) in [-1, 1]
    concepts: list[str]
    labels: list[str]  # the concepts' names
    styles: list[str]  # every style of the dataset, sorted: the judged styles index it
    names: dict  # style -> its names (sources.json)
    true_style: torch.Tensor  # (n,) index into styles
    judged_style: torch.Tensor  # (n,) the judge's zero-shot style of each source
    embeds: torch.Tensor  # (n, D) unit judge embeddings
    real_features: torch.Tensor  # (N, F) judge features of every image of the split (the real manifold)

    def styles_of(self, emb: torch.Tensor, per_source: int) -> torch.Tensor:
        """Judged styles (len(emb),) of images made per_source at a time from each source, source-major."""
        return judged_styles(self.view, emb, [l for l in self.labels for _ in range(per_source)], self.styles, self.names)

    def top5(self, emb: torch.Tensor, per_source: int) -> torch.Tensor:
        """(len(emb),) bool: the source's concept among the judge's top-5 concepts of each image."""
        return self.view.ranks(emb, [c for c in self.concepts for _ in range(per_source)]) <= 5


def load_sources(view: JudgeView, data: Path, n: int, rng: np.random.Generator) -> Sources:
    """n held-out images drawn by `rng` (sorted rows of the split), their judged styles and embeddings."""
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack

    names = style_names()
    styles = _styles_of(data, names)
    images, idx = image_pack(data, "heldout_images")
    pick = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
    real = uint8_to_tensor(np.asarray(images))  # every image of the split: the real manifold
    features, emb_all = view.images(real)
    emb, labels = emb_all[torch.from_numpy(pick)], [idx["concept_labels"][i] for i in pick]  # the picked sources
    return Sources(view, real[torch.from_numpy(pick)], [idx["concepts"][i] for i in pick], labels, styles, names,
                   torch.tensor([styles.index(idx["styles"][i]) for i in pick]),
                   judged_styles(view, emb, labels, styles, names), emb, features)


def variations(pipe, src: Sources, k: int, eta: float, inversion: bool, seed: int, decoder_steps: int) -> dict:
    """k variations of each source (fresh noise, or its inverted x_T), judged against their source."""
    out = _pt(pipe.variations(src.images, k, eta=eta, use_inversion=inversion, decoder_steps=decoder_steps,
                              upsample=False, output_type="pt", generator=torch.Generator().manual_seed(seed * 1000)))
    _, emb = src.view.images(out)  # (n·k, D), source-major
    style = src.styles_of(emb, k)
    rep = lambda x: x.repeat_interleave(k, 0)  # noqa: E731  (each source once per variation)
    n = len(src.images)
    per = {"cosine": (emb * rep(src.embeds)).sum(-1), "top5": src.top5(emb, k).float(),  # (n·k,) each
           "style_kept": (style == rep(src.judged_style)).float()}
    return {"per_image": k, "eta": eta, "inversion": inversion, **{m: float(v.mean()) for m, v in per.items()},
            "style_true": float((style == rep(src.true_style)).float().mean()),
            "diversity": float(np.mean([mean_pairwise_distance(emb[i * k:(i + 1) * k]) for i in range(n)]))
            if k > 1 else None,
            "values": {m: v.view(n, k).mean(1).tolist() for m, v in per.items()}}  # per source, for `paired_edits`


def interpolations(pipe, src: Sources, frames: int, seed: int, decoder_steps: int) -> dict:
    """Image i with image i + n/2, beside a pixel cross-fade of the same two."""
    half, w = len(src.images) // 2, torch.linspace(0, 1, frames)[:, None, None, None]
    paths, fades = [], []
    for i in range(half):
        a, b = src.images[i:i + 1], src.images[i + half:i + half + 1]
        paths.append(_pt(pipe.interpolate(a, b, frames, decoder_steps=decoder_steps, upsample=False, output_type="pt",
                                          generator=torch.Generator().manual_seed(seed * 1000 + i))))
        fades.append((1 - w) * a + w * b)
    interior = torch.ones(half, frames, dtype=torch.bool)
    interior[:, [0, -1]] = False
    interior = interior.flatten()
    out = {"pairs": half, "frames": frames}
    for name, seq in (("unclip", paths), ("crossfade", fades)):
        feats, emb = src.view.images(torch.cat(seq))  # (half·F, ·), pair-major
        m = [path_metrics(emb[i * frames:(i + 1) * frames], src.embeds[i], src.embeds[i + half]) for i in range(half)]
        out[name] = {**{key: float(np.mean([r[key] for r in m])) for key in m[0]},
                     "precision_interior": precision_recall(src.real_features, feats[interior])[0],
                     "precision_ends": precision_recall(src.real_features, feats[~interior])[0],
                     "values": {key: [r[key] for r in m] for key in ("evenness", "monotone")}}  # per pair
    return out


def text_diffs(pipe, src: Sources, thetas: list[float], targets: list[int], seed: int, decoder_steps: int) -> dict:
    """Each source from "<concept>, <its style> style" towards the same concept in the style targets[i]."""
    edits = []
    for i, label in enumerate(src.labels):
        say = lambda s: f"{label}, {src.names[src.styles[s]][0]} style"  # noqa: E731
        edits.append(_pt(pipe.text_diff(src.images[i:i + 1], say(int(src.true_style[i])), say(targets[i]), thetas,
                                        decoder_steps=decoder_steps, upsample=False, output_type="pt",
                                        generator=torch.Generator().manual_seed(seed * 1000 + i))))
    n, T = len(src.images), len(thetas)
    _, emb = src.view.images(torch.cat(edits))  # (n·T, D), source-major
    style, top5 = src.styles_of(emb, T).view(n, T), src.top5(emb, T).view(n, T)
    cos = (emb.view(n, T, -1) * src.embeds[:, None]).sum(-1)  # (n, T)
    per = {"target_style": (style == torch.tensor(targets)[:, None]).float(), "top5": top5.float(), "cosine": cos}
    return {"thetas": thetas, "per_theta": [
        {"theta": th, **{m: float(v[:, j].mean()) for m, v in per.items()},
         "source_style": float((style[:, j] == src.judged_style).float().mean()),
         "values": {m: v[:, j].tolist() for m, v in per.items()}} for j, th in enumerate(thetas)]}  # per source


def paired_edits(base: dict, new: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """New minus base over the same images (two `evaluate_edits` reports of the same n and seed), per
    section and measure: the mean difference and a 95% bootstrap interval over images (pairs for the
    interpolations), as `evaluate.paired` does over prompts."""
    check_same_draw(base, new, "images")
    rng = np.random.default_rng(seed)

    def diff(a: dict, b: dict) -> dict:
        if "values" not in a or "values" not in b:
            raise ValueError("a report has no per-image values (made before they were recorded): rerun "
                             "`unclip eval-edits --json` for it")
        out = {}
        for m, v in b["values"].items():
            d = np.asarray(v) - np.asarray(a["values"][m])  # (images,)
            out[m] = mean_interval(d, d[rng.integers(0, len(d), size=(resamples, len(d)))])
        return out

    out = {}
    if "variations" in base and "variations" in new:
        out["variations"] = diff(base["variations"], new["variations"])
    if "interpolations" in base and "interpolations" in new:
        out["interpolations"] = diff(base["interpolations"]["unclip"], new["interpolations"]["unclip"])
    if "text_diffs" in base and "text_diffs" in new:
        old = {m["theta"]: m for m in base["text_diffs"]["per_theta"]}
        out["text_diffs"] = {str(m["theta"]): diff(old[m["theta"]], m) for m in new["text_diffs"]["per_theta"]
                             if m["theta"] in old}
    if not out:
        raise ValueError("the two reports share no section to compare")
    return out


@torch.no_grad()
def evaluate_edits(pipe, judge, data: Path, n: int = 16, variations_per_image: int = 4, frames: int = 6,
                   thetas=THETAS, seed: int = 0, decoder_steps: int = 25, eta: float = 1.0, inversion: bool = False,
                   sections=SECTIONS, progress: bool = True) -> dict:
    """Variations, interpolations and text diffs (`sections`, any subset) of n held-out images under the
    judge (module docstring). `judge` may be a JudgeView already built. Decoder images, not upsampled
    (the judge sees 64 px). The same n and seed edit the same images with the same noise whatever runs."""
    import time

    from tqdm.auto import tqdm

    from unclip.evaluate import judge_view
    from unclip.pipeline import check_ranges

    check_ranges(decoder_steps=decoder_steps, eta=eta)  # before the judge's minute of features
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"sections must be one or more of {', '.join(SECTIONS)}, got {list(sections)}")
    if n < 2:
        raise ValueError(f"n must be at least 2 (interpolations pair the images), got {n}")
    if variations_per_image < 1:
        raise ValueError(f"variations must be at least 1, got {variations_per_image}")
    if frames < 3:
        raise ValueError(f"frames must be at least 3 (two endpoints and an interior frame), got {frames}")
    thetas = [float(t) for t in thetas]
    if not thetas or not all(0 <= t <= 1 for t in thetas):
        raise ValueError(f"thetas must be one or more values in [0, 1], got {thetas}")
    rng = np.random.default_rng(seed)
    src = load_sources(judge if isinstance(judge, JudgeView) else judge_view(judge, data), data, n, rng)
    others = lambda i: [s for s in range(len(src.styles)) if s != int(src.true_style[i])]  # noqa: E731
    targets = [int(rng.choice(others(i))) for i in range(len(src.images))]  # each text diff's style
    pairs = (src.embeds @ src.embeds.T)[~torch.eye(len(src.embeds), dtype=torch.bool)]  # two different sources
    report = {"n": len(src.images), "seed": seed, "decoder_steps": decoder_steps, "styles": src.styles,
              "sources": {"style_accuracy": float((src.judged_style == src.true_style).float().mean()),
                          "top5": float(src.top5(src.embeds, 1).float().mean()), "unrelated_cosine": float(pairs.mean())}}
    run = {"variations": lambda: variations(pipe, src, variations_per_image, eta, inversion, seed, decoder_steps),
           "interpolations": lambda: interpolations(pipe, src, frames, seed, decoder_steps),
           "text_diffs": lambda: text_diffs(pipe, src, thetas, targets, seed, decoder_steps)}
    t0 = time.perf_counter()
    for name in tqdm([s for s in SECTIONS if s in sections], desc="edits", disable=not progress):
        report[name] = run[name]()
    report["seconds"] = time.perf_counter() - t0
    return report
