"""Turn one artwork file (SVG, PNG, WebP) into an RGB PNG on a white background.

Vector art is rendered at the target size; raster art keeps its native size (never upscaled: a
64 px PNG stored at 256 px would teach an upsampler to blur), downscaled if larger than the target.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

MAX_PIXELS = 4096 * 4096


class CorruptImage(ValueError):
    """The file could not be decoded as an image."""


@dataclass(frozen=True)
class Rendered:
    png: bytes
    size: int  # stored side length in pixels
    native_size: int  # side length the artwork has (the render size for vector art)
    sha1: str  # of the RGB pixels, for exact-duplicate detection


def render_svg(data: bytes, size: int) -> Image.Image:
    import cairosvg  # the `data` extra

    try:
        png = cairosvg.svg2png(bytestring=data, output_width=size, output_height=size)
    except Exception as e:  # cairosvg raises many types on malformed XML
        raise CorruptImage(f"SVG does not render: {type(e).__name__}: {e}") from None
    return Image.open(io.BytesIO(png))


def open_raster(data: bytes, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Image.Image:
    """Decode a raster image fully; anything unreadable, truncated, over `max_pixels` or with a side over
    `max_side` is CorruptImage (the size is read from the header, before any pixel is decoded: no
    decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > max_pixels:
                raise CorruptImage(f"{im.width}x{im.height} is over the pixel limit")
            if max_side is not None and max(im.size) > max_side:
                raise CorruptImage(f"{im.width}x{im.height} is over the side limit of {max_side} px")
            im.load()  # decodes now, so truncation is caught here
            im = ImageOps.exif_transpose(im)  # a camera's orientation tag: the picture as it is seen
            im = to_8bit(im)
    except CorruptImage:
        raise
    except Exception as e:
        raise CorruptImage(f"not a readable image: {type(e).__name__}: {e}") from None
    return im


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale ("I;16", "I", "F") scaled to 8 bits: PIL's own conversion clips them
    at 255, which turns a 16-bit image nearly white."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return im
    import numpy as np

    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        top = 65535.0  # the format's own range: a dark image stays dark
    else:
        top = 1.0 if im.mode == "F" and a.max() <= 1.0 else (255.0 if a.max() <= 255 else 65535.0)
    return Image.fromarray(np.clip(np.rint(a / top * 255), 0, 255).astype(np.uint8), "L")


def on_white(im: Image.Image) -> Image.Image:
    """Composite RGBA/LA/P art onto white, centred on a square canvas."""
    im = im.convert("RGBA")
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas.convert("RGB")


def render(data: bytes, fmt: str, size: int) -> Rendered:
    """Decode `data` (format 'svg' | 'iconify' | 'png' | 'webp') into a square RGB PNG of side <= `size`."""
    if fmt in ("svg", "iconify"):
        im = on_white(render_svg(data, size))
        native = size
    else:
        im = on_white(open_raster(data))
        native = im.width
        if im.width > size:
            im = im.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return Rendered(png=buf.getvalue(), size=im.width, native_size=native, sha1=hashlib.sha1(im.tobytes()).hexdigest())
