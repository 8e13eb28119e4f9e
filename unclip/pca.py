"""PCA of the CLIP image embeddings: what z_i keeps, component by component (the paper's Figure 7).

`fit_pca` runs on a set of z_i (the training split's, via `unclip pca`) and is saved in the model
directory as `clip_pca.safetensors`; `project` keeps the first k components of a z_i, which the
decoder then draws (`UnCLIPPipeline.pca_reconstructions`).
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.weights import load_safetensors, save_safetensors

FILE = "clip_pca.safetensors"


def fit_pca(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """z (N, D) -> mean (D,), components (D, D) rows by decreasing variance, variance (D,)."""
    z = z.double()
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    variance = s**2 / max(len(z) - 1, 1)
    k = vh.shape[0]
    comps = torch.zeros(z.shape[1], z.shape[1], dtype=z.dtype)
    comps[:k] = vh  # N < D leaves zero rows at the end: they explain nothing
    var = torch.zeros(z.shape[1], dtype=z.dtype)
    var[:k] = variance
    return {"mean": mean.float(), "components": comps.float(), "variance": var.float()}


def project(z: torch.Tensor, pca: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Keep the first k principal components of z (B, D); renormalised to the unit sphere CLIP lives on."""
    d = pca["components"].shape[0]
    if not 0 <= k <= d:
        raise ValueError(f"k must be between 0 and {d}, got {k}")
    c = pca["components"][:k].to(z)  # (k, D)
    mean = pca["mean"].to(z)
    return F.normalize(mean + (z - mean) @ c.T @ c, dim=-1)


def save_pca(pca: dict[str, torch.Tensor], directory: Path) -> Path:
    path = Path(directory) / FILE
    save_safetensors({k: v.contiguous() for k, v in pca.items()}, path)
    return path


def load_pca(directory: Path) -> dict[str, torch.Tensor] | None:
    path = Path(directory) / FILE
    return {k: v.float() for k, v in load_safetensors(path).items()} if path.exists() else None
