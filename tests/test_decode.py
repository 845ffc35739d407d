"""Decoding any PNG/JPEG chest X-ray into an S x S uint8 array: modes, geometry, bad files."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from cxrjobs.data import decode
from cxrjobs.data.decode import DecodeError, decode_bytes, decode_file


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(h: int = 100, w: int = 100) -> np.ndarray:
    """A smooth 8-bit ramp (left-right plus top-bottom) spanning 0..255."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.rint(255 * (x / (w - 1) * 0.6 + y / (h - 1) * 0.4)).astype(np.uint8)


# ----------------------------------------------------------------------------- modes

def test_mode_l_at_native_size_is_lossless():
    arr = gradient()
    data = encode(Image.fromarray(arr))
    assert Image.open(io.BytesIO(data)).mode == "L"
    out = decode_bytes(data, 100)
    assert out.dtype == np.uint8 and out.shape == (100, 100)
    np.testing.assert_array_equal(out, arr)


def test_mode_la_ignores_alpha():
    arr = gradient()
    alpha = np.where(np.arange(100)[None, :] < 50, 0, 255).astype(np.uint8).repeat(100, 0)
    im = Image.merge("LA", [Image.fromarray(arr), Image.fromarray(alpha)])
    data = encode(im)
    assert Image.open(io.BytesIO(data)).mode == "LA"
    np.testing.assert_array_equal(decode_bytes(data, 100), arr)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_modes_use_luminance_not_one_channel(mode):
    # Left half pure red, right half pure blue: luminance 76 and 29 (ITU-R 601), while the
    # red channel alone would read 255 / 0.
    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[:, :50, 0] = 255
    rgb[:, 50:, 2] = 255
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(128)
    data = encode(im)
    assert Image.open(io.BytesIO(data)).mode == mode
    out = decode_bytes(data, 100)
    assert out.shape == (100, 100) and out.dtype == np.uint8
    assert np.all(np.abs(out[:, :50].astype(int) - 76) <= 1)
    assert np.all(np.abs(out[:, 50:].astype(int) - 29) <= 1)


def test_palette_mode_maps_through_the_palette():
    # Inverted grey palette: index i is drawn as 255 - i, so reading raw indices would be wrong.
    idx = gradient()
    im = Image.frombytes("P", (100, 100), idx.tobytes())
    im.putpalette([v for i in range(256) for v in (255 - i,) * 3])
    data = encode(im)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_bytes(data, 100)
    np.testing.assert_array_equal(out, 255 - idx)


def test_16bit_is_rescaled_by_its_real_range():
    # A 12-bit-like detector range: 1000..3000 in a 16-bit PNG.
    raw = np.linspace(1000, 3000, 100 * 100).reshape(100, 100).astype(np.uint16)
    data = encode(Image.fromarray(raw))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    full = decode_bytes(data, 100)
    assert full.dtype == np.uint8
    # Rescaled by min/max: spans 0..255. Dividing by 65535 would give at most ~12; clipping to
    # 0..255 would give 255 everywhere.
    assert full.min() == 0 and full.max() == 255
    expected = np.rint((raw.astype(np.float64) - 1000) * 255 / 2000)
    assert np.abs(full.astype(float) - expected).max() <= 1
    small = decode_bytes(data, 64)
    assert small.shape == (64, 64)
    assert small.min() <= 3 and small.max() >= 252
    assert len(np.unique(small)) > 100  # a ramp, not a few clipped levels


def test_16bit_constant_image_does_not_divide_by_zero():
    raw = np.full((40, 40), 1234, np.uint16)
    out = decode_bytes(encode(Image.fromarray(raw)), 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert not np.any(out)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32bit_modes_are_rescaled_by_their_range(mode):
    # Pillow cannot write these modes to PNG (and no longer opens 16-bit PNGs as "I", as older
    # versions did), so exercise the conversion step that decode_bytes applies to them.
    vals = np.linspace(-50_000, 400_000, 80 * 80).reshape(80, 80)
    im = Image.fromarray(vals.astype(np.int32 if mode == "I" else np.float32))
    assert im.mode == mode
    gray = decode._to_gray(im)
    out = decode._resize(gray, 80, "pad")
    assert out.dtype == np.uint8 and out.shape == (80, 80)
    assert out.min() == 0 and out.max() == 255
    expected = np.rint((vals + 50_000) * 255 / 450_000)
    assert np.abs(out.astype(float) - expected).max() <= 1
    assert decode._resize(gray, 32, "pad").shape == (32, 32)


@pytest.mark.parametrize("colour", [False, True])
def test_jpeg_grey_and_rgb(colour):
    arr = gradient(120, 160)
    im = Image.fromarray(np.stack([arr] * 3, -1)) if colour else Image.fromarray(arr)
    data = encode(im, "JPEG", quality=95)
    for size in (160, 64, 40):  # 64 and 40 let the JPEG decoder downscale in the DCT domain
        out = decode_bytes(data, size)
        ref = decode_bytes(encode(Image.fromarray(arr)), size)
        assert out.shape == (size, size) and out.dtype == np.uint8
        rows = np.nonzero(ref.max(1))[0]
        diff = np.abs(out[rows].astype(int) - ref[rows].astype(int))
        assert diff.mean() < 3, (size, diff.mean())


# ----------------------------------------------------------------------------- halving

def _pillow_half(arr: np.ndarray) -> np.ndarray:
    h, w = arr.shape
    return np.asarray(Image.fromarray(arr).resize((w // 2, h // 2), Image.Resampling.BILINEAR, reducing_gap=1.5))


def test_halving_gives_pillows_bytes():
    """The numpy halving path (1024 -> 512 and every exact factor of 2) writes what Pillow's
    bilinear resize writes, to the byte: noise, extremes and a one-pixel checkerboard (the worst
    case for rounding), at sizes that put the edge columns and rows next to each other."""
    rng = np.random.default_rng(0)
    shapes = [(1024, 1024), (2048, 1600), (1600, 2048), (4, 4), (4, 6), (6, 4), (10, 1024), (2048, 1024)]
    shapes += [(h, w) for h in range(4, 40, 2) for w in range(4, 40, 2) if 2 * w >= h]
    for h, w in shapes:
        checker = (np.indices((h, w)).sum(0) % 2 * 255).astype(np.uint8)
        for arr in (rng.integers(0, 256, (h, w), dtype=np.uint8), checker, np.full((h, w), 255, np.uint8)):
            assert np.array_equal(decode._halve(arr), _pillow_half(arr)), (h, w)


def test_halving_from_threads_keeps_images_apart():
    """predict decodes in threads: each thread halves in its own scratch arrays, so images of
    different sizes decoded at once come out as they do one by one."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, h), dtype=np.uint8) for h in (1024, 512, 800, 64) * 6]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(decode._halve, images))
    assert all(np.array_equal(a, _pillow_half(x)) for a, x in zip(together, images))


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("shape", [(1024, 1024), (1000, 1200), (1200, 1000), (1024, 400), (400, 1024)])
def test_resize_by_half_matches_pillow_in_both_fits(shape, fit, monkeypatch):
    """_resize takes the numpy path where it equals Pillow and Pillow's own path elsewhere (an
    image under half as wide as tall, where Pillow resamples vertically first): the same bytes
    either way."""
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    size = (max if fit == "pad" else min)(shape) // 2
    calls = []
    monkeypatch.setattr(decode, "_halve", lambda x, halve=decode._halve: calls.append(x.shape) or halve(x))
    fast = decode._resize(Image.fromarray(arr), size, fit)
    assert calls == ([shape] if 2 * shape[1] >= shape[0] else [])
    h, w = shape[0] // 2, shape[1] // 2
    ref = np.zeros((size, size), np.uint8)
    half = _pillow_half(arr)
    if fit == "pad":
        ref[(size - h) // 2:(size - h) // 2 + h, (size - w) // 2:(size - w) // 2 + w] = half
    else:
        ref = half[(h - size) // 2:(h - size) // 2 + size, (w - size) // 2:(w - size) // 2 + size]
    assert fast.shape == (size, size) and np.array_equal(fast, ref)


# ----------------------------------------------------------------------------- geometry

def test_pad_wide_image_puts_bands_top_and_bottom():
    data = encode(Image.fromarray(np.full((100, 200), 200, np.uint8)))  # 200 wide, 100 high
    out = decode_bytes(data, 64, "pad")
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert not out[:16].any() and not out[48:].any()
    assert np.all(out[16:48] == 200)


def test_pad_tall_image_puts_bands_left_and_right():
    data = encode(Image.fromarray(np.full((200, 100), 90, np.uint8)))
    out = decode_bytes(data, 64, "pad")
    assert not out[:, :16].any() and not out[:, 48:].any()
    assert np.all(out[:, 16:48] == 90)


def test_crop_keeps_the_centre_and_fills_the_square():
    # 200 x 100: the outer 50 columns each side are bright, the centre 100 are mid-grey. Crop fit
    # scales the short side to S and keeps the centre, so only mid-grey remains.
    arr = np.full((100, 200), 255, np.uint8)
    arr[:, 50:150] = 100
    out = decode_bytes(encode(Image.fromarray(arr)), 64, "crop")
    assert out.shape == (64, 64)
    assert np.all(out[:, 2:-2] == 100)
    assert np.all(out > 0)  # no padding anywhere


def test_upscaling_a_small_image():
    arr = np.array([[0, 255], [255, 0]], np.uint8).repeat(8, 0).repeat(8, 1)  # 16 x 16 checker
    out = decode_bytes(encode(Image.fromarray(arr)), 64)
    assert out.shape == (64, 64)
    assert out[:28, :28].max() < 10 and out[36:, 36:].max() < 10
    assert out[:28, 36:].min() > 245 and out[36:, :28].min() > 245


@pytest.mark.parametrize("h,w,size,fit", [(37, 91, 17, "pad"), (91, 37, 33, "crop"), (5, 300, 64, "pad"),
                                          (300, 5, 64, "crop"), (1, 1, 16, "pad"), (257, 255, 128, "crop")])
def test_output_is_always_s_by_s_uint8(h, w, size, fit):
    arr = np.maximum(gradient(max(h, 2), max(w, 2))[:h, :w], 1)  # never black: padding stays told apart
    out = decode_bytes(encode(Image.fromarray(arr)), size, fit)
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert out.any()


# ----------------------------------------------------------------------------- files and errors

def test_decode_file_returns_sha256_of_the_bytes(tmp_path):
    data = encode(Image.fromarray(gradient()))
    p = tmp_path / "x.png"
    p.write_bytes(data)
    arr, digest = decode_file(str(p), 100)
    assert digest == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(arr, gradient())


def test_truncated_png(tmp_path):
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), np.uint8)))
    p = tmp_path / "t.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode_file(str(p), 64)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "z.png"
    p.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty file"):
        decode_file(str(p), 64)


def test_text_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("Image Index,Finding Labels\n00000001_000.png,No Finding\n")
    with pytest.raises(DecodeError, match="not an image"):
        decode_file(str(p), 64)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError, match="cannot read file"):
        decode_file(str(tmp_path / "nope.png"), 64)


def test_other_formats_are_rejected_by_name():
    with pytest.raises(DecodeError, match="unsupported format BMP"):
        decode_bytes(encode(Image.fromarray(gradient()), "BMP"), 64)


@pytest.mark.parametrize("side", [100, 40])  # > 2x the limit (error) and between 1x and 2x (warning)
def test_decompression_bomb_guard(monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.fromarray(gradient(side, side)))
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_bytes(data, 32)
