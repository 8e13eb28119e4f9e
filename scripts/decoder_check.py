"""How much of a z_i does the decoder draw? The decoder alone, without the prior: the model card's numbers.

    .venv/bin/python scripts/decoder_check.py [--model DIR] [--decoder RUN/model] [--per-style 6] [--json]

`per_style` held-out images of each style (a seeded choice) are decoded from their own z_i (the CLIP stage's)
and canonical caption (DDIM, the model's decoder guidance, no upsampling, seeded) and scored:
- cosine between the reconstruction's z_i and the source's, in the CLIP stage (two different images: the
  `baseline`) and under the independent judge, and the source's rank among all sources (judge);
- its concept under the judge, top-1/top-5 among every concept name, beside the sources' own (the ceiling):
  does the decoder draw the object, not only the style and layout;
- its style under a linear probe on z_i fitted on the training images (`finetune.StyleProbe`), beside the
  sources'.
`--decoder` swaps in a training run's decoder export (e.g. ~/.cache/unclip/runs/NAME/model) with the
model's other stages, so a decoder run can be compared with the shipped one on the same images and seeds.
`--conditioning` adds, for the same images, the x0-MSE at fixed noise levels given their own z_i, another
image's and the null one, with and without the caption (`decoder_checks.conditioning_errors`): what z_i adds to
the denoising loss, apart from what the sampler makes of it; and beside them what z_i alone says about the
pixels with no decoder at all (`decoder_checks.neighbour_errors`: the mean of the training images nearest in z_i).
A few minutes on 2 CPU threads for the default 60 images.
"""

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from unclip.cli.common import find_judge
    from unclip.clip_task import uint8_to_tensor
    from unclip.conditioning import load_clip_dir
    from unclip.decoder import Decoder
    from unclip.embed import image_pack
    from unclip.evaluate import decode_batches, judge_view, source_retrieval
    from unclip.finetune import StyleProbe
    from unclip.models import default_model_dir
    from unclip.paths import default_data_dir
    from unclip.pipeline import UnCLIPPipeline

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--decoder", type=Path, help="a decoder export to score instead of the model's")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--judge", type=Path)
    p.add_argument("--split", default="heldout_images", choices=("heldout_images", "train"))
    p.add_argument("--per-style", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, help="decoder guidance (default: the model's)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--conditioning", action="store_true", help="also the x0-MSE per noise level and conditioning")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.per_style < 1:
        p.error("--per-style must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = UnCLIPPipeline.from_pretrained(a.model)
    if a.decoder:
        pipe = pipe.with_decoder(Decoder.load(a.decoder))
    images, idx = image_pack(a.data, a.split)
    rng = np.random.default_rng(a.seed)
    styles = np.asarray(idx["styles"])
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(styles == s), size=min(a.per_style, int((styles == s).sum())),
                                              replace=False) for s in sorted(set(styles))]))
    caps = [idx["captions"][idx["caption_offsets"][i]] for i in rows]
    real = uint8_to_tensor(np.asarray(images[rows]))  # (n, 3, 64, 64) in [-1, 1]
    with torch.no_grad():
        z = pipe.clip.encode_image(real)  # (n, D)
        out = decode_batches(lambda zb, cb, g: pipe.from_embeds(
            zb, cb, decoder_steps=a.steps, decoder_guidance_scale=a.guidance, sampler="ddim", upsample=False,
            output_type="pt", generator=g).images * 2 - 1, z, caps, a.seed)
        z_rec = pipe.clip.encode_image(out)
    zn, rn = F.normalize(z, dim=-1), F.normalize(z_rec, dim=-1)
    n = len(rows)
    off = ~torch.eye(n, dtype=torch.bool)
    view = judge_view(load_clip_dir(find_judge(a.judge)), a.data)
    (_, j_real), (_, j_rec) = view.images(real), view.images(out)
    source = source_retrieval(j_rec, j_real)
    concepts = [idx["concepts"][i] for i in rows]
    rank_rec, rank_real = view.ranks(j_rec, concepts), view.ranks(j_real, concepts)
    probe = StyleProbe(pipe.clip, a.model, [a.data])
    truth = styles[rows].tolist()
    said_real, said_rec = probe(z), probe(z_rec)
    per_style = {s: sum(r == t == s for r, t in zip(said_rec, truth)) / truth.count(s) for s in sorted(set(truth))}
    r = {"model": str(a.model), "decoder": str(a.decoder or a.model / "decoder"), "split": a.split, "images": n,
         "steps": a.steps, "guidance": pipe.default_decoder_guidance(a.guidance, inverted=False), "seed": a.seed,
         "clip_cosine": round(float((zn * rn).sum(1).mean()), 4), "clip_baseline": round(float((zn @ zn.T)[off].mean()), 4),
         "judge_cosine": round(source["cosine"], 4), "source_top1": source["top1"], "source_top5": source["top5"],
         "concept_top1": float((rank_rec <= 1).float().mean()), "concept_top5": float((rank_rec <= 5).float().mean()),
         "concept_top1_real": float((rank_real <= 1).float().mean()), "concept_top5_real": float((rank_real <= 5).float().mean()),
         "style": float(np.mean([s == t for s, t in zip(said_rec, truth)])),
         "style_real": float(np.mean([s == t for s, t in zip(said_real, truth)])),
         "style_per_style": {k: round(v, 3) for k, v in per_style.items()}}
    if a.conditioning:
        from unclip.conditioning import Conditioning
        from unclip.decoder_checks import conditioning_errors

        from unclip.decoder_checks import neighbour_errors

        cond = Conditioning(a.data, a.split, a.model, clip=pipe.clip)
        r["conditioning_x0_mse"] = conditioning_errors(pipe.decoder, cond, rows.tolist(), seed=a.seed)
        train = cond if a.split == "train" else Conditioning(a.data, "train", a.model, clip=pipe.clip)
        r["z_i_alone_x0_mse"] = neighbour_errors(train, cond, rows.tolist(), pipe.decoder.config.sample_size)
    if a.json:
        print(json.dumps(r))
        return 0
    print(f"{n} {a.split} images from their own z_i (DDIM {a.steps}, guidance {r['guidance']}):")
    print(f"  CLIP-stage cosine to the source {r['clip_cosine']:.3f} (two different images {r['clip_baseline']:.3f})")
    print(f"  judge cosine {r['judge_cosine']:.3f}; source found top-1 {r['source_top1']:.1%} / top-5 {r['source_top5']:.1%} among {n}")
    print(f"  judge concept top-1 {r['concept_top1']:.1%} / top-5 {r['concept_top5']:.1%} "
          f"(the sources: {r['concept_top1_real']:.1%} / {r['concept_top5_real']:.1%}; {len(view.concepts)} names)")
    print(f"  style probe {r['style']:.1%} (the sources {r['style_real']:.1%}): "
          + ", ".join(f"{k} {v:.0%}" for k, v in r["style_per_style"].items()))
    if a.conditioning:
        c = r["conditioning_x0_mse"]
        print("  x0-MSE at t = " + " / ".join(map(str, c["timesteps"])) + ":")
        for name, v in c.items():
            if name != "timesteps":
                print(f"    {name:<22}" + " / ".join(f"{x:.4f}" for x in v))
        print("  x0-MSE from z_i alone, no decoder: " + ", ".join(f"{k} {v:.4f}" for k, v in r["z_i_alone_x0_mse"].items()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
