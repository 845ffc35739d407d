"""Decode any PNG/JPEG chest X-ray into an 8-bit grayscale S x S array.

Modes L, LA, RGB, RGBA, P, 1, CMYK go through Pillow's conversion to L; 16/32-bit integer and
float images are rescaled by their real value range (a 12-bit scan stored in 16 bits would be
nearly black if divided by 65535). Downscaling is antialiased (Pillow's resize convolves with a
support scaled to the reduction factor); `reducing_gap` lets Pillow first reduce by whole
factors. A gap of 1.5 measured faster than 2.0 and with less aliasing at 1024 -> 224
(1.1 vs 1.5 ms; residual of a stripe pattern beyond the output's resolution 6.6 vs 7.7).

At 1024 -> 512 no gap reduces (the factor is 2): the resize is one bilinear pass (2.1 ms a
phantom image on one core, beside 7.4 ms of PNG decoding and 0.5 ms of sha256). Image.reduce(2)
would take 0.5 ms, but it is a 2x2 box: a sine sweep between the output's Nyquist frequency and
the input's leaves a mean residual of 30.5 grey levels after it, against 8.9 after bilinear
(amplitude 100). The bilinear filter stays, but an 8-bit image halved in both directions goes
through `_halve`, which computes Pillow's bilinear result byte for byte in 0.65-0.95 ms (numpy,
in cache-sized chunks, on pixels exported without a copy) instead of 2.1-2.2: the shards are the
same whichever path made them, so nothing about the output (plan.json, the manifest) records
which one ran. torch's antialiased uint8 interpolate gives the same bytes too, but took 2.5 ms on
one grey channel; torchvision's decode_png (libpng) gives Pillow's pixels but took 8.2 ms against
Pillow's 7.6.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
FITS = ("pad", "crop")


class DecodeError(Exception):
    """The file is skipped: the message is the reason written to rejects.csv."""


def _to_gray(im: Image.Image) -> Image.Image:
    if im.mode in HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray((arr - lo) * scale, mode="F")
    if im.mode != "L":
        return im.convert("L")
    return im


# Pillow's fixed-point arithmetic for 8-bit resampling (libImaging/Resample.c): coefficients
# carry PRECISION_BITS fraction bits, each pass rounds half up and clips to 0..255.
_PRECISION_BITS = 32 - 8 - 2
_ROUND = 1 << (_PRECISION_BITS - 1)


def _fixed(weight: float) -> int:
    return int(0.5 + weight * (1 << _PRECISION_BITS))


# Halving with Pillow's bilinear filter (support 1, scaled by 2): output j reads inputs 2j-1 .. 2j+2
# with weights 1/8, 3/8, 3/8, 1/8, exact in fixed point, so (a + 3b + 3c + d + 4) >> 3. The first
# and last outputs lose the tap that falls outside and renormalise: 3/7, 3/7, 1/7.
_EDGE_NEAR, _EDGE_FAR = _fixed(0.75 / 1.75), _fixed(0.25 / 1.75)


_CHUNK = 1 << 16  # uint16 items per step: three 128 KiB scratch arrays stay in a core's L2 cache
_scratch = threading.local()  # predict decodes in threads


def _buffer(name: str, n: int, dtype) -> np.ndarray:
    """This thread's scratch array `name` of n items, kept for the next image: a fresh megabyte
    costs more in page faults than the arithmetic done in it."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = np.empty(n, dtype)
        setattr(_scratch, name, buf)
    return buf[:n]


def _pixels(im: Image.Image) -> np.ndarray:
    """An 8-bit image's pixels as a read-only (h, w) array. Pillow (>= 11.2) exports its memory
    through Arrow without a copy when the image sits in one block; np.asarray copies it twice
    (tobytes, then a join), 0.5-0.9 ms at 1024 px with the page faults of the new megabyte."""
    if hasattr(im, "__arrow_c_array__"):
        try:
            import pyarrow

            return pyarrow.array(im).to_numpy(zero_copy_only=True).reshape(im.height, im.width)
        except (ValueError, TypeError):  # rows in several blocks (a very large image)
            pass
    return np.asarray(im)


def _taps(a, b, t, out, before=None, after=None) -> None:
    """Pillow's bilinear halving along axis 0 away from the ends: with a[j] = x[2j] and
    b[j] = x[2j+1], out[j] = (x[2j-1] + 3 x[2j] + 3 x[2j+1] + x[2j+2] + 4) >> 3. `before` (x[-1])
    and `after` (x[2n]) are the neighbours outside this chunk, where it has them."""
    np.add(a, b, out=t, dtype=np.uint16)  # at most 8 * 255 + 4 below: uint16 never overflows
    t *= 3
    t[1:] += b[:-1]
    t[:-1] += a[1:]
    if before is not None:
        t[0] += before
    if after is not None:
        t[-1] += after
    t += 4
    np.right_shift(t, 3, out=out, casting="unsafe")


def _edges(a, b, out) -> None:
    """The first and last output along axis 0 (three taps each, renormalised)."""
    wide = np.int64
    out[0] = ((a[0].astype(wide) + b[0]) * _EDGE_NEAR + a[1].astype(wide) * _EDGE_FAR + _ROUND) >> _PRECISION_BITS
    out[-1] = ((a[-1].astype(wide) + b[-1]) * _EDGE_NEAR + b[-2].astype(wide) * _EDGE_FAR
               + _ROUND) >> _PRECISION_BITS


def _halve(x: np.ndarray) -> np.ndarray:
    """A C-contiguous (2h, 2w) uint8 image at (h, w) (h, w >= 2): exactly what
    Image.resize((w, h), BILINEAR, reducing_gap=1.5) gives, at a third of its cost: the horizontal
    pass, rounded to 8 bits, then the vertical one. Pillow (13) starts with the vertical pass when
    the image is under half as wide as tall, so `_resize` leaves those images to Pillow."""
    rows, cols = x.shape[0], x.shape[1] // 2
    step = max(1, _CHUNK // cols)  # rows per chunk
    t = _buffer("taps", step * cols, np.uint16)
    even, odd = _buffer("even", step * cols, np.uint16), _buffer("odd", step * cols, np.uint16)
    # Horizontal: each pair of bytes read as one little-endian uint16 splits into an even and an
    # odd column; a chunk's rows run on as one flat array (contiguous, fast), and the first and
    # last column of each row, which read across a row end there, are redone below.
    pairs = x.reshape(-1).view("<u2")
    half_width = _buffer("half_width", rows * cols, np.uint8).reshape(rows, cols)
    flat = half_width.reshape(-1)
    for r in range(0, rows * cols, step * cols):
        p = pairs[r:r + step * cols]
        n = len(p)
        np.bitwise_and(p, 0xFF, out=even[:n])
        np.right_shift(p, 8, out=odd[:n])
        _taps(even[:n], odd[:n], t[:n], flat[r:r + n])
    by_pair = x.reshape(rows, cols, 2)
    _edges(by_pair[:, :, 0].T, by_pair[:, :, 1].T, half_width.T)
    # Vertical: output row i reads rows 2i-1 .. 2i+2 of the half-width image, one chunk of rows at
    # a time (the rows either side of a chunk come in as `before` and `after`).
    out = np.empty((rows // 2, cols), np.uint8)
    top, bottom = half_width[0::2], half_width[1::2]
    for r in range(0, rows // 2, step):
        k = min(step, rows // 2 - r)
        _taps(top[r:r + k], bottom[r:r + k], t[:k * cols].reshape(k, cols), out[r:r + k],
              bottom[r - 1] if r else None, top[r + k] if r + k < rows // 2 else None)
    _edges(top, bottom, out)
    return out


def _resize(im: Image.Image, size: int, fit: str) -> np.ndarray:
    w, h = im.size
    scale = size / max(w, h) if fit == "pad" else size / min(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if im.mode == "L" and (2 * nw, 2 * nh) == (w, h) and min(nw, nh) >= 2 and 2 * w >= h:
        arr = _halve(_pixels(im))
        if arr.shape == (size, size):
            return arr  # a new array already: no padding, no copy
    else:
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=1.5)
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    out = np.zeros((size, size), dtype=np.uint8)
    if fit == "pad":
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top:top + nh, left:left + nw] = arr
    else:
        top, left = (nh - size) // 2, (nw - size) // 2
        out[:] = arr[top:top + size, left:left + size]
    return out


def decode_bytes(data: bytes, size: int, fit: str = "pad") -> np.ndarray:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; a job should not decode those.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG":
                im.draft("L", (size, size))  # DCT-domain downscale: far less to decode
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb guard: {e}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"corrupt or truncated image: {e}") from None
    if im.format not in ("PNG", "JPEG", "MPO"):
        raise DecodeError(f"unsupported format {im.format}; expected PNG or JPEG")
    return _resize(_to_gray(im), size, fit)


def decode_file(path: str, size: int, fit: str = "pad") -> tuple[np.ndarray, str]:
    """(S x S uint8 array, sha256 of the file). Reads the file once for both."""
    try:
        with open(path, "rb", buffering=0) as f:  # unbuffered: one read into one bytes object
            data = f.read()
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror}") from None
    return decode_data(data, size, fit)


_hashers: dict[int, ThreadPoolExecutor] = {}


def _hasher() -> ThreadPoolExecutor:
    """This process's hashing thread (a forked decoding worker makes its own: threads do not
    survive a fork)."""
    pid = os.getpid()
    if pid not in _hashers:
        _hashers[pid] = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    return _hashers[pid]


def decode_data(data: bytes, size: int, fit: str = "pad") -> tuple[np.ndarray, str]:
    """(S x S uint8 array, sha256 of the bytes): an image fetched from an object store.

    The bytes are hashed in a thread while Pillow decodes them: both release the GIL, and the
    hash (0.3 ms a 1024 px PNG) no longer adds to the decoding (6.5-7 ms)."""
    digest = _hasher().submit(hashlib.sha256, data)
    return decode_bytes(data, size, fit), digest.result().hexdigest()
