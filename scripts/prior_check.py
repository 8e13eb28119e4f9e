"""How good are a prior's z_i? The numbers of the model card's prior section, for any prior.

    .venv/bin/python scripts/prior_check.py [--model DIR] [--ar] [--prior RUN/model] [--n 200] [--json]

For `n` held-out images per split (a seeded choice, one seeded caption each), the prior samples z_i
from the caption (DDPM 25 steps, guidance 4, best of 2: the pipeline's defaults; --guidance, --best-of) and is scored
against the image's own z_i (cosine), and by the nearest concept name among all concepts under the
model's CLIP stage (top-1/top-5; the real z_i's own retrieval is the reference). Where the data's
embeddings are cached (`unclip embed`), also how far each z_i lies from the data: its cosine to the
nearest training image's z_i (a sample off the manifold of real embeddings decodes as a blend), and
whether that image shows the asked concept (held-out images only: their concepts are in training).
`--prior` swaps
in another prior export (a training run's model/ directory) with the model's CLIP stage. `--ar` scores the
autoregressive prior instead (guidance on its logits and best of N as the pipeline; no sampler or steps). Cheap: a
minute on 2 CPU threads, so a prior run can be checked between checkpoints before a judge evaluation.
"""

import argparse
import json
import random
import sys
from pathlib import Path


def main() -> int:
    import numpy as np
    import torch

    from unclip.ar_prior import ARPrior
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack
    from unclip.models import default_model_dir
    from unclip.paths import default_data_dir
    from unclip.pipeline import UnCLIPPipeline
    from unclip.prior import Prior

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--prior", type=Path, help="a prior export to score instead of the model's")
    p.add_argument("--ar", action="store_true", help="the autoregressive prior (--prior: an ar_prior export)")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=4.0, help="prior guidance (the pipeline's default: 4)")
    p.add_argument("--best-of", type=int, default=2, help="prior samples per caption (the pipeline's default: 2)")
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim", "dpm++"),
                   help="prior sampler (ddpm: sample_image_embeds' default; `unclip generate` runs ddim)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = UnCLIPPipeline.from_pretrained(a.model)
    if a.prior and a.ar:
        pipe.ar_prior = ARPrior.load(a.prior)
    elif a.prior:
        pipe.prior = Prior.load(a.prior)
    labels = {}
    for split in ("train", "heldout_images", "heldout_concepts"):
        _, idx = image_pack(a.data, split)
        labels.update(zip(idx["concepts"], idx["concept_labels"]))
    concepts = sorted(labels)
    names = torch.cat([pipe.encode_prompt([labels[c] for c in concepts[b:b + 256]])[0].text_embed
                       for b in range(0, len(concepts), 256)])  # (K, D)

    def hits(z, target):
        top = (z @ names.T).topk(5, dim=1).indices
        return float((top[:, :1] == target[:, None]).any(1).float().mean()), float((top == target[:, None]).any(1).float().mean())

    train_z, train_concepts = _train_embeds(a.data, a.model, concepts)  # (N, D), (N,) or None

    def nearest(z):  # cosine to the nearest training z_i (B,), and that image's concept (B,)
        sims = torch.cat([z[b:b + 256] @ train_z.T for b in range(0, len(z), 256)])  # (B, N)
        best = sims.max(1)
        return best.values / z.norm(dim=1), train_concepts[best.indices]

    kind = "ar" if a.ar else "diffusion"
    out = {"model": str(a.model), "prior": str(a.prior or a.model / ("ar_prior" if a.ar else "prior")), "kind": kind,
           "n": a.n, "guidance": a.guidance, "best_of": a.best_of, "splits": {},
           **({} if a.ar else {"sampler": a.sampler, "steps": a.steps})}
    for split in ("heldout_images", "heldout_concepts"):
        images, idx = image_pack(a.data, split)
        rng = random.Random(a.seed)
        rows = sorted(rng.sample(range(len(images)), min(a.n, len(images))))
        offs = idx["caption_offsets"]
        captions = [idx["captions"][rng.randrange(offs[i], offs[i + 1])] for i in rows]
        target = torch.tensor([concepts.index(idx["concepts"][i]) for i in rows])
        with torch.no_grad():
            real = pipe.clip.encode_image(uint8_to_tensor(np.asarray(images[rows])))  # (n, D)
            text, empty = pipe.encode_prompt(captions)
            z = pipe.sample_image_embeds(text, empty, steps=a.steps, guidance_scale=a.guidance, best_of=a.best_of,
                                         sampler=a.sampler, prior=kind, generator=torch.Generator().manual_seed(a.seed))
        (t1, t5), (r1, r5) = hits(z, target), hits(real, target)
        m = out["splits"][split] = {"cosine_to_real": round(float((z * real).sum(1).mean()), 4), "top1": t1, "top5": t5,
                                    "real_top1": r1, "real_top5": r5, "candidates": len(concepts),
                                    "norm": round(float(z.norm(dim=1).mean()), 4)}
        if train_z is not None:
            (nn_z, c_z), (nn_real, c_real) = nearest(z), nearest(real)
            m.update(nn_cosine=round(float(nn_z.mean()), 4), real_nn_cosine=round(float(nn_real.mean()), 4))
            if split == "heldout_images":
                m.update(nn_concept=float((c_z == target).float().mean()), real_nn_concept=float((c_real == target).float().mean()))
    if a.json:
        print(json.dumps(out))
    else:
        for split, m in out["splits"].items():
            print(f"{split:<17} cosine to the real z_i {m['cosine_to_real']:.3f}  concept top-1 {m['top1']:.1%} / "
                  f"top-5 {m['top5']:.1%}  (the real z_i: {m['real_top1']:.1%} / {m['real_top5']:.1%}; "
                  f"{m['candidates']} names)")
            if "nn_cosine" in m:
                same = (f"; it shows the asked concept {m['nn_concept']:.1%} (real {m['real_nn_concept']:.1%})"
                        if "nn_concept" in m else "")
                print(f"{'':<17} nearest training z_i at cosine {m['nn_cosine']:.3f} (real {m['real_nn_cosine']:.3f}){same}; "
                      f"norm {m['norm']:.3f}")
    return 0


def _train_embeds(data: Path, model: Path, concepts: list[str]):
    """The training split's cached z_i (N, D) under the model's CLIP stage and their concept ids (N,),
    or (None, None) where `unclip embed` has not cached them (this script never computes them)."""
    import numpy as np
    import torch

    from unclip.embed import cached_clip_embeddings, image_pack

    cached = cached_clip_embeddings(data, "train", model)
    if cached is None:
        return None, None
    ids = {c: i for i, c in enumerate(concepts)}
    return (torch.from_numpy(np.asarray(cached["image_embed"], dtype=np.float32)),
            torch.tensor([ids[c] for c in image_pack(data, "train")[1]["concepts"]]))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
