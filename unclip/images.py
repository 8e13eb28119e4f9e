"""Writing generated images: grids, and PNGs that carry their parameters and say they are generated."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin


def grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    rows = -(-len(images) // cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def save_png(image: Image.Image, path, parameters: dict) -> None:
    """PNG with a `parameters` text chunk (prompt, seed, steps, sampler, model hash, ...) and the
    IPTC digital-source-type marking it as AI-generated (trainedAlgorithmicMedia)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True))
    info.add_text("Software", "unclip")
    info.add_text("DigitalSourceType", "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")
    if hasattr(path, "write"):  # a file object (the server's responses)
        image.save(path, format="PNG", pnginfo=info)
        return
    from unclip.fsutil import atomic_path

    with atomic_path(Path(path)) as tmp:  # a crash never leaves a truncated PNG under the name
        image.save(tmp, format="PNG", pnginfo=info)


def save_animation(frames: list[Image.Image], path, duration_ms: int = 120) -> None:
    """A looping GIF or lossless WebP (by the suffix), written atomically."""
    from unclip.fsutil import atomic_path

    fmt = {".gif": "GIF", ".webp": "WEBP"}[Path(path).suffix.lower()]
    with atomic_path(Path(path)) as tmp:
        frames[0].save(tmp, format=fmt, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0,
                       **({"lossless": True} if fmt == "WEBP" else {}))


def to_output(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) in [-1, 1] -> PIL list | (B, H, W, 3) float numpy in [0, 1] | the tensor in [0, 1]."""
    x = (images.float() * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]
