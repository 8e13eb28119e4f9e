"""Writing generated images: grids, and PNGs that carry their parameters and say they are generated."""

import json
from pathlib import Path

from PIL import Image, PngImagePlugin


def grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or min(len(images), 4)
    rows = -(-len(images) // cols)
    w, h = images[0].size
    out = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def save_png(image: Image.Image, path: Path, parameters: dict) -> None:
    """PNG with a `parameters` text chunk (prompt, seed, steps, sampler, model hash, ...) and the
    IPTC digital-source-type marking it as AI-generated (trainedAlgorithmicMedia)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True))
    info.add_text("Software", "unclip")
    info.add_text("DigitalSourceType", "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, pnginfo=info)
