"""Diagnostics of a trained decoder: what it reads from its conditioning (`conditioning_errors`) against
what z_i alone says about an image's pixels (`neighbour_errors`); `scripts/decoder_check.py` prints both."""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from unclip.decoder import Decoder


@torch.no_grad()
def conditioning_errors(model: "Decoder", cond, indices: list[int], timesteps=(100, 300, 500, 700, 850, 950, 990),
                        seed: int = 0) -> dict[str, list[float]]:
    """How much of each image the decoder recovers from what it is given: x0-MSE (the x0 its ε implies,
    clamped) per noise level in `timesteps`, with fixed noise, for the images `indices` of the
    Conditioning `cond`, given their own z_i or the next image's (the z_i of another image) or the learned
    null z_i, each with the canonical caption or "". Own minus another / null is what z_i adds: a
    denoising-loss view of the paper's conditioning ablation, without the sampler's trajectory."""
    from unclip.diffusion import Schedule

    n, schedule = len(indices), Schedule()
    x0 = cond.pixels(indices, model.config.sample_size)  # (n, 3, S, S)
    ids = [int(cond.offsets[i]) for i in indices]  # canonical (first) captions
    null = torch.ones(n, dtype=torch.bool)
    caption, empty = cond.text(ids), cond.text(ids, null)  # z_t (n, D), tokens (n, T, W), mask (n, T); "" for all
    z_i = cond.image_embeds(indices)  # (n, D)
    other = z_i.roll(1, 0)
    variants = {"own z_i": (z_i, caption, None), "other z_i": (other, caption, None), "null z_i": (z_i, caption, null),
                "own z_i, no caption": (z_i, empty, None), "null z_i, no caption": (z_i, empty, null)}
    out = {name: [] for name in variants}
    was_training = model.training
    model.eval()
    for i, step in enumerate(timesteps):
        t = torch.full((n,), int(step))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + i))
        x_t = schedule.q_sample(x0, t, noise)
        for name, (z, (z_t, hidden, mask), dropped) in variants.items():
            eps = model(x_t, t, z, z_t, hidden, mask, dropped)[:, :3].float()
            x0_pred = schedule.predict_x0(x_t, t, eps).clamp(-1, 1)
            out[name].append(float((x0_pred - x0).pow(2).mean()))
    model.train(was_training)
    return {"timesteps": list(timesteps), **out}


@torch.no_grad()
def neighbour_errors(train, cond, indices: list[int], size: int, k: int = 16, temperature: float = 0.05) -> dict:
    """What z_i alone says about an image's pixels, without any decoder: the x0-MSE of the training images'
    mean image, and of the softmax(cos / temperature)-weighted mean of the k training images nearest in z_i
    (the image itself left out when `cond` is `train`). A decoder whose x0 at high noise, where x_t holds
    little, errs more than this reads less from z_i than z_i holds (`conditioning_errors`)."""
    x0 = cond.pixels(indices, size)  # (n, 3, S, S)
    z = F.normalize(cond.image_embeds(indices).float(), dim=-1)  # (n, D)
    bank = F.normalize(train.image_embeds(list(range(len(train)))).float(), dim=-1)  # (N, D)
    sim = z @ bank.T  # (n, N)
    if cond is train:
        sim[torch.arange(len(indices)), torch.as_tensor(indices)] = -2.0
    weight, near = sim.topk(k, dim=1)  # (n, k)
    weight = torch.softmax(weight / temperature, dim=1)
    estimate = torch.einsum("nk,nkchw->nchw", weight, train.pixels(near.flatten().tolist(), size).view(len(indices), k, *x0.shape[1:]))
    mean = torch.zeros_like(x0[:1])
    for start in range(0, len(train), 2048):  # the training images' mean, in chunks
        mean += train.pixels(list(range(start, min(start + 2048, len(train)))), size).sum(0, keepdim=True)
    mean /= len(train)
    return {"mean image": float((x0 - mean).pow(2).mean()), f"{k} z_i neighbours": float((x0 - estimate).pow(2).mean())}
