"""Which decoder candidate to keep, and how early can it be chosen? The numbers behind `--rerank` and `--rerank-at`.

    .venv/bin/python scripts/rerank_check.py [--model DIR] [--n 128] [--k 4] [--json]

For the n held-out prompts per split that `unclip eval --n N` draws (same seed, same picks), K candidates each
(their own prior samples and decoder noise; `generate`'s sampler and steps, at the decoder's 64 px). At every
decoder step the clean image each candidate's output implies is scored by the model's CLIP stage against the
prompt's z_t (what `rerank_at` compares; "z_t@s"), against the candidate's own z_i (how faithfully the decoder
is drawing its prior sample; "z_i@s"), and by the sum of both ("both@s"); the finished images are scored by the
judge of `unclip eval`. For each such chooser and each K' in {2, K} (the first K' candidates): the judge's concept
top-5 hit, 1/rank and CLIP score of the candidate picked ("final": on the finished images; z_t@final is `--rerank`),
minus the mean over the K' candidates (what a random pick, i.e. no reranking, scores on average), with a 95%
bootstrap interval over prompts; and the judge's own best candidate (oracle, a ceiling for any reranker).
One run answers every (K', s) pair on the same images; `unclip eval --rerank K --rerank-at S` then measures
the chosen setting end to end.
"""

import argparse
import json
import sys
from pathlib import Path

MEASURES = ("top5", "mrr", "clip_score")


def main() -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from unclip.cli.common import find_judge
    from unclip.conditioning import load_clip_dir
    from unclip.embed import image_pack
    from unclip.evaluate import SPLITS, judge_view, mean_interval, pick_prompts
    from unclip.models import default_model_dir
    from unclip.paths import default_data_dir
    from unclip.pipeline import UnCLIPPipeline
    from unclip.sampling import make_scheduler, predicted_x0

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--judge", type=Path)
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--k", type=int, default=4, help="candidates per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prior-guidance", type=float, default=4.0, help="the prior's guidance (the pipeline's default: 4; "
                   "lower draws candidates with more different z_i)")
    p.add_argument("--batch", type=int, default=4, help="prompts per pipeline call")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--show", default="1,2,3,4,6,8,12,final", help="steps to print (the JSON has all)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.n < 2 or a.k < 2:
        raise SystemExit("--n and --k must be at least 2")
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = UnCLIPPipeline.from_pretrained(a.model)
    view = judge_view(load_clip_dir(find_judge(a.judge)), a.data)
    alphas_cumprod = make_scheduler("ddim", "epsilon").alphas_cumprod
    predicted = []  # one (N, 3, S, S) per decoder step of the current call
    guided_denoiser = pipe.decoder.guided_denoiser

    def recording(*args, **kwargs):
        denoise = guided_denoiser(*args, **kwargs)

        def wrapped(x, t):
            out = denoise(x, t)
            predicted.append(predicted_x0(out, x, alphas_cumprod[t], "epsilon").clamp(-1, 1))
            return out
        return wrapped

    pipe.decoder.guided_denoiser = recording
    rng, boot_rng = np.random.default_rng(a.seed), np.random.default_rng(0)
    report = {"n": a.n, "k": a.k, "prior_guidance": a.prior_guidance, "splits": {}}
    for split in SPLITS:
        images, idx = image_pack(a.data, split)
        _, prompts, concepts = pick_prompts(idx, len(images), a.n, rng)  # as `unclip eval`
        n, k = len(prompts), a.k
        steps_x0, finals, embeds = [], [], []
        for b in tqdm(range(0, n, a.batch), desc=split):
            predicted.clear()
            out = pipe(prompts[b:b + a.batch], k, upsample=False, output_type="pt", prior_guidance_scale=a.prior_guidance,
                       generator=torch.Generator().manual_seed(a.seed * 1000 + b))
            finals.append(out.images * 2 - 1)
            embeds.append(out.image_embeds)
            steps_x0.append(torch.stack(predicted))  # (S, B*K, 3, H, W)
        x0, final = torch.cat(steps_x0, 1), torch.cat(finals)  # prompt-major: each prompt's K candidates in a row
        z_t = F.normalize(pipe.encode_prompt(prompts)[0].text_embed.float(), dim=-1).repeat_interleave(k, 0)

        z_i = F.normalize(torch.cat(embeds).float(), dim=-1)  # (N*K, D) each candidate's own prior sample
        chooser = {}
        for s, x in [(str(s + 1), x0[s]) for s in range(len(x0))] + [("final", final)]:
            e_x = F.normalize(pipe.encode_image(x).float(), dim=-1)
            by_text, by_own = (e_x * z_t).sum(-1).view(n, k), (e_x * z_i).sum(-1).view(n, k)
            chooser[f"z_t@{s}"], chooser[f"z_i@{s}"], chooser[f"both@{s}"] = by_text, by_own, by_text + by_own
        _, e = view.images(final)
        rank = view.ranks(e, [c for c in concepts for _ in range(k)]).float().view(n, k)
        judged = {"top5": (rank <= 5).float(), "mrr": 1 / rank,
                  "clip_score": (e * view.texts(prompts).float().repeat_interleave(k, 0)).sum(-1).view(n, k)}
        boot = boot_rng.integers(0, n, size=(2000, n))
        res = {"prompts": n, "steps": len(x0)}
        for kk in sorted({2, k}):
            rows = {"random": {m: float(v[:, :kk].mean()) for m, v in judged.items()},
                    "oracle": {m: float(v[:, :kk].max(1).values.mean()) for m, v in judged.items()}}
            for s, score in chooser.items():
                pick_s = score[:, :kk].argmax(1)
                rows[s] = {}
                for m, v in judged.items():
                    d = (v[torch.arange(n), pick_s] - v[:, :kk].mean(1)).numpy()  # chosen minus a random pick
                    rows[s][m] = float(v[torch.arange(n), pick_s].mean())
                    rows[s][m + "_gain"] = mean_interval(d, d[boot])
            res[f"k{kk}"] = rows
        report["splits"][split] = res
    if a.json:
        print(json.dumps(report))
        return 0
    for split, res in report["splits"].items():
        for kk in sorted({2, a.k}):
            rows = res[f"k{kk}"]
            print(f"{split}, K = {kk}: random pick top-5 {rows['random']['top5']:.1%} MRR {rows['random']['mrr']:.3f} "
                  f"CLIP {rows['random']['clip_score']:.3f}; judge's best {rows['oracle']['top5']:.1%}")
            for s in [s for s in rows if s.split("@")[-1] in a.show.split(",")]:
                r = rows[s]
                gains = "  ".join(f"{m} {r[m + '_gain']['mean']:+.3f} [{r[m + '_gain']['ci95'][0]:+.3f}, "
                                  f"{r[m + '_gain']['ci95'][1]:+.3f}]" for m in MEASURES)
                print(f"  by {s:>10}: top-5 {r['top5']:.1%}  MRR {r['mrr']:.3f}  CLIP {r['clip_score']:.3f}  "
                      f"gain over random: {gains}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
