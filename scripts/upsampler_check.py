"""How good is an upsampler? The PSNR numbers of the model card's upsampler section, for any upsampler.

    .venv/bin/python scripts/upsampler_check.py [--model DIR] [--upsampler RUN/model ...] [--n 16] [--json]

The first `n` held-out images natively at the upsampler's output size (256 px) are shrunk to its
input size with the same antialiased bicubic every stage uses (`degrade.downsample`) and brought
back: bicubic (the floor), then each upsampler at each setting (sampler, steps, strength; seed 0).
PSNR in dB on a 0-1 scale over all pixels of the set. `--upsampler` adds other upsampler exports (a
training run's model/ directory) beside the model's own, so a run can be checked between
checkpoints; a minute on 2 CPU threads.
"""

import argparse
import json
import sys
from pathlib import Path

SETTINGS = (("ddim", 4, 0.5), ("dpm++", 4, 0.5), ("ddim", 7, 0.5), ("ddim", 7, 1.0))  # the card's rows


def main() -> int:
    import numpy as np
    import torch

    from unclip.clip_task import uint8_to_tensor
    from unclip.degrade import downsample, upsample
    from unclip.embed import image_pack
    from unclip.models import default_model_dir
    from unclip.paths import default_data_dir
    from unclip.upsampler import Upsampler

    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=default_model_dir())
    p.add_argument("--upsampler", type=Path, action="append", default=[], help="another upsampler export (repeatable)")
    p.add_argument("--data", type=Path, default=default_data_dir())
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    models = {str(d): Upsampler.load(d).eval() for d in [a.model, *a.upsampler]}
    size, factor = next(iter(models.values())).config.sample_size, next(iter(models.values())).config.factor
    images, _ = image_pack(a.data, "heldout_images", resolution=size, min_native_size=size)
    hr = uint8_to_tensor(np.asarray(images[:a.n]))  # (n, 3, size, size) in [-1, 1]
    low = downsample(hr, factor)

    def psnr(x):  # both in [-1, 1]; PSNR on the 0-1 scale
        return round(float(10 * torch.log10(4 / (x.clamp(-1, 1) - hr).pow(2).mean())), 2)

    out = {"n": len(hr), "size": size, "bicubic": psnr(upsample(low, size)), "upsamplers": {}}
    with torch.no_grad():
        for name, m in models.items():
            out["upsamplers"][name] = [
                {"sampler": s, "steps": k, "strength": st,
                 "psnr": psnr(m.sample(low, steps=k, sampler=s, strength=st, generator=torch.Generator().manual_seed(0)))}
                for s, k, st in SETTINGS]
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['n']} held-out images at {size} px from {size // factor} px: bicubic {out['bicubic']:.2f} dB")
        for name, rows in out["upsamplers"].items():
            print(f"{name}: " + ", ".join(f"{r['sampler']} {r['steps']} steps at strength {r['strength']:g} {r['psnr']:.2f} dB"
                                          for r in rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
