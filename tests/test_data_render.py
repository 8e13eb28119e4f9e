import io

import pytest
from PIL import Image

from conftest import NPM
from unclip.data.render import CorruptImage, render


def test_svg_renders_at_target_size_on_white():
    r = render((NPM / "twemoji-svg/package/1f680.svg").read_bytes(), "svg", 96)
    im = Image.open(io.BytesIO(r.png))
    assert im.mode == "RGB" and im.size == (96, 96) and r.native_size == 96
    assert im.getpixel((0, 0)) == (255, 255, 255), "transparent corners must be composited onto white"
    assert len(im.getcolors(maxcolors=1 << 16)) > 20, "the artwork itself must be drawn"


def test_raster_keeps_native_size_and_is_never_upscaled():
    data = (NPM / "emoji-datasource-google/package/img/google/64/1f600.png").read_bytes()
    r = render(data, "png", 256)
    assert r.size == r.native_size == 64
    webp = (NPM / "lobehub-fluent-emoji-3d/package/assets/1f680.webp").read_bytes()
    r = render(webp, "webp", 64)
    assert r.native_size == 256 and r.size == 64


def test_identical_pixels_hash_equal():
    data = (NPM / "twemoji-svg/package/1f600.svg").read_bytes()
    assert render(data, "svg", 32).sha1 == render(data, "svg", 32).sha1 != render(data, "svg", 33).sha1


@pytest.mark.parametrize("fmt,data", [
    ("png", b"\x89PNG\r\n\x1a\n not really"),
    ("png", (NPM / "emoji-datasource-google/package/img/google/64/1f600.png").read_bytes()[:300]),  # truncated
    ("svg", b"<svg><path d="),
    ("webp", b"RIFF\x00\x00"),
])
def test_corrupt_or_truncated_images_raise(fmt, data):
    with pytest.raises(CorruptImage):
        render(data, fmt, 64)


def test_16_bit_greys_keep_their_tones_and_camera_orientation_is_applied():
    import numpy as np

    from unclip.data.render import open_raster

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 6), 10000, dtype=np.uint16)).save(buf, "PNG")  # a 16-bit grey PNG
    im = open_raster(buf.getvalue())
    assert im.mode == "L" and im.getpixel((0, 0)) == 39  # 10000 / 65535 of white; PIL alone clips it to 255
    dark = io.BytesIO()
    Image.fromarray(np.full((4, 6), 200, dtype=np.uint16)).save(dark, "PNG")
    assert open_raster(dark.getvalue()).getpixel((0, 0)) == 1  # a dark 16-bit image stays dark
    jpg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": how phones store portrait photos
    Image.new("RGB", (40, 20), "red").save(jpg, "JPEG", exif=exif.tobytes())
    assert open_raster(jpg.getvalue()).size == (20, 40)


def test_size_limits_are_checked_on_the_header_before_any_decoding():
    from unclip.data.render import open_raster

    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 5000), dtype=np.uint8)).save(buf, "PNG")
    header_only = buf.getvalue()[:100]  # truncated: decoding it would fail with "not a readable image"
    with pytest.raises(CorruptImage, match="over the side limit of 4096 px"):
        open_raster(header_only, max_side=4096)
    with pytest.raises(CorruptImage, match="over the pixel limit"):
        open_raster(header_only, max_pixels=1000)
    with pytest.raises(CorruptImage, match="not a readable image"):
        open_raster(header_only)  # within both limits: decoded, and the truncation found
    assert open_raster(buf.getvalue(), max_side=5000).size == (5000, 8)
