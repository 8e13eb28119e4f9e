"""The CLIP-guided baseline unCLIP replaced: steer a diffusion decoder by CLIP similarity gradients.

As in CLIP-guided diffusion (Crowson; GLIDE's CLIP guidance with an un-noised CLIP): at every
step the decoder predicts ε, the clean image x̂0 is formed from it, `cutn` random crops of x̂0
(random scale and position, flips, a little noise) go through the CLIP image tower, and the
gradient of the spherical distance to the prompt's z_t with respect to x_t shifts ε:
    ε' = ε + √(1 - ᾱ_t) · s · ∇_{x_t} Σ_cuts d(E_img(cut), z_t)
(= adding s·∇ log p(caption | x_t) to the score). The decoder gets the learned null z_i, and
either the caption (`condition="caption"`, a GLIDE-like text-conditioned generator, with
classifier-free guidance over the caption) or "" (`condition="none"`, unconditional), so the
comparison with unCLIP uses the same network and the same sampler.
"""

import torch
import torch.nn.functional as F

from unclip.clip import TextEncoding

CONDITIONS = ("caption", "none")


def random_cutouts(x: torch.Tensor, cutn: int, size: int, generator: torch.Generator | None = None,
                   min_scale: float = 0.5, noise: float = 0.05) -> torch.Tensor:
    """(B,3,H,W) -> (B·cutn, 3, size, size): differentiable random square crops (side min_scale..1 of
    the image, anywhere inside it), half of them mirrored, plus Gaussian noise. Row b·cutn + j is
    cut j of image b."""
    b = len(x)
    n = b * cutn
    scale = min_scale + (1 - min_scale) * torch.rand(n, generator=generator)  # crop side / image side
    centre = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - scale[:, None])  # crop stays inside
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta.to(x), (n, 3, size, size), align_corners=False)
    cuts = F.grid_sample(x.repeat_interleave(cutn, 0), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return cuts + noise * torch.randn(cuts.shape, generator=generator).to(x)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between unit vectors (rows), as CLIP-guided diffusion uses."""
    return (a - b).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


def clip_guided_denoiser(decoder, clip, text: TextEncoding, empty: TextEncoding, alphas_cumprod: torch.Tensor, *,
                         clip_guidance_scale: float, cutn: int = 16, condition: str = "caption",
                         guidance_scale: float = 3.0, generator: torch.Generator | None = None):
    """x_t, t -> ε shifted by the CLIP gradient (and guided over the caption when condition="caption")."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, not {condition!r}")
    b = len(text)
    null = decoder.null_image_embed[None].expand(b, -1).detach()
    cond = text if condition == "caption" else empty.repeat(b)
    eps_fn = decoder.guided_denoiser(null, cond, empty, guidance_scale if condition == "caption" else 1.0)
    target = text.text_embed.repeat_interleave(cutn, 0)  # (B·cutn, D)
    size = clip.image_size

    def denoise(x, t):
        a = alphas_cumprod[t].to(x)
        if clip_guidance_scale == 0:
            with torch.no_grad():
                return eps_fn(x, t)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = eps_fn(x, t)
            eps = out[:, :3]
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # not clamped: a clamp would zero the gradient
            z = clip.encode_image(random_cutouts(x0, cutn, size, generator))  # (B·cutn, D) unit norm
            loss = spherical_distance(z, target.to(z)).sum()
            grad = torch.autograd.grad(loss, x)[0]
        shifted = out[:, :3].detach() + (1 - a).sqrt() * clip_guidance_scale * grad
        return torch.cat([shifted, out[:, 3:].detach()], 1)

    return denoise
