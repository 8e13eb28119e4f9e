"""Corruptions of the upsamplers' low-resolution condition (the paper: Gaussian blur for 64→256,
a BSR-style degradation for 256→1024), applied per sample with that sample's generator."""

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def gaussian_kernels(sigmas: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) standard deviations -> (B, size, size) normalised isotropic Gaussian kernels."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigmas[:, None] ** 2))  # (B, size)
    k = k1[:, :, None] * k1[:, None, :]  # (B, size, size)
    return k / k.sum((1, 2), keepdim=True)


def blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of (B, C, H, W) with reflect padding."""
    size = 2 * int(max(float(sigmas.max()), 0.1) * 3) + 1
    b, c, h, w = x.shape
    k = gaussian_kernels(sigmas.clamp(min=1e-3), size).to(x)  # (B, k, k)
    weight = k[:, None].repeat_interleave(c, 0)  # (B*C, 1, k, k)
    xp = F.pad(x.reshape(1, b * c, h, w), [size // 2] * 4, mode="reflect")
    return F.conv2d(xp, weight, groups=b * c).reshape(b, c, h, w)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False)


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """How every stage brings the low-resolution image to the output size (as diffusers' UnCLIPPipeline)."""
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def degrade_blur(hr: torch.Tensor, factor: int, gens: list[torch.Generator], sigma=(0.4, 0.6)) -> torch.Tensor:
    """High-res (B,3,H,W) -> low-res (B,3,H/f,W/f), blurred with σ ~ U(sigma) low-res pixels."""
    low = downsample(hr, factor)
    s = torch.stack([sigma[0] + (sigma[1] - sigma[0]) * torch.rand((), generator=g) for g in gens])
    return blur(low, s).clamp(-1, 1)


def degrade_bsr(hr: torch.Tensor, factor: int, gens: list[torch.Generator]) -> torch.Tensor:
    """A BSR-style chain (Zhang et al. 2021), shortened: blur, random resize, noise, JPEG, per sample."""
    out = []
    for x, g in zip(hr, gens):
        u = torch.rand(6, generator=g).tolist()
        x = blur(x[None], torch.tensor([0.2 + 2.8 * u[0]]))
        mode = ("bilinear", "bicubic", "area")[int(u[1] * 3)]
        size = x.shape[-1] // factor
        x = F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        x = x + (1 + 24 * u[2]) / 255 * 2 * torch.randn(x.shape, generator=g)
        out.append(_jpeg(x[0].clamp(-1, 1), quality=int(30 + 65 * u[3])))
    return torch.stack(out)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(back).permute(2, 0, 1) / 127.5 - 1


DEGRADATIONS = {"blur": degrade_blur, "bsr": degrade_bsr}
