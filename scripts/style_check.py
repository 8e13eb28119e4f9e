"""Style rendering of fine-tuned models on more captions than `finetune`'s report (which takes 16 held-out ones).

    python scripts/style_check.py OUT/data base OUT/model [OTHER/model ...] [--train 31]

For the first captions of SRC's held-out images and `--train` training captions (spread over the split),
with the same seeds for every model: the share of generated images (64 px), of the prior's z_i and of
images decoded from the real images' own z_i that the style probe (`finetune.StyleProbe`, on the base
model's CLIP stage) files under SRC's style, each with the probe's mean probability of that style in
brackets (less noisy than the share). `base` names the base model itself; a lora/ directory works too.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="the fine-tune's imported data (OUT/data)")
    ap.add_argument("models", nargs="+", help="model or lora/ directories; `base` for the base model")
    ap.add_argument("--base", type=Path, help="base model (default: the shipped model)")
    ap.add_argument("--base-data", type=Path, help="the base model's dataset (default: the default data dir)")
    ap.add_argument("--train", type=int, default=31, help="training captions added to the held-out ones")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import json

    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack
    from unclip.finetune import StyleProbe, load_finetuned, style_embeds
    from unclip.models import default_model_dir
    from unclip.paths import default_data_dir
    from unclip.pipeline import UnCLIPPipeline

    torch.set_num_threads(a.threads)
    base = Path(a.base or default_model_dir())
    before = UnCLIPPipeline.from_pretrained(base)
    probe = StyleProbe(before.clip, base, [Path(a.base_data or default_data_dir()).expanduser(), a.data])
    k = probe.names.index(json.loads((a.data / "manifest.json").read_text())["style"])
    captions, images = [], []
    for split, n in (("heldout_images", None), ("train", a.train)):
        pixels, idx = image_pack(a.data, split)
        first = idx["caption_offsets"][:-1]
        rows = list(range(len(first)) if n is None else range(0, len(first), max(len(first) // max(n, 1), 1)))[:n]
        captions += [idx["captions"][first[i]] for i in rows]
        images.append(uint8_to_tensor(np.asarray([pixels[i] for i in rows])))
    real = before.clip.encode_image(torch.cat(images))  # (n, D)

    def score(z: torch.Tensor) -> str:
        logits = probe.logits(z)  # (n, styles)
        share, p = (logits.argmax(-1) == k).float().mean(), F.softmax(logits, -1)[:, k].mean()
        return f"{float(share):.1%} ({float(p):.3f})"

    print(f"{len(captions)} captions; real images {score(real)}", flush=True)
    for name in a.models:
        pipe = before if name == "base" else load_finetuned(base, Path(name).expanduser())
        prior_z, image_z, own_z = style_embeds(pipe, captions, real, seed=0)
        shown = {"generated": image_z, "prior's z_i": prior_z, "own z_i": own_z}
        print(name, "  ".join(f"{key} {score(z)}" for key, z in shown.items()), flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
