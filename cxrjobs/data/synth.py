"""Synthetic ("phantom") chest X-ray datasets written in the real on-disk layouts.

Two layouts, so the real readers are exercised end to end without the real images:

* NIH ChestX-ray14 (Kaggle copy): ``Data_Entry_2017.csv`` with the official 11-cell header and
  ``images_001/images/00000001_000.png`` ... (4,999 files in the first folder, then 10,000 per folder,
  as in the real download).
* ieee8023 covid-chestxray-dataset: ``metadata.csv`` plus ``covid/`` and ``non_covid/`` folders.

Each label draws a distinct, coarse pattern (enlarged heart, fluid level, blobs, ...) so a tiny
CNN at 224 px can learn it; position, size, intensity and noise are jittered so no two images
match. The quirks real data has (RGBA and 16-bit PNGs, RGB JPEGs, corrupt files, lateral and CT
rows) are written on purpose and listed in the returned ``SynthSummary``.

Every image gets its own RNG from ``(seed, row index)``, so output bytes do not depend on
``workers``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import multiprocessing as mp
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrjobs.errors import DataError
from cxrjobs.procfs import ignore_sigint

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
# Extra phantom patterns used by the COVID layout.
COVID_PATTERN, LOBAR_PATTERN = "COVID-19", "Lobar_Consolidation"

# The official header: the last two "columns" contain commas, so the file really has 11 cells.
NIH_COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]
NIH_CSV = "Data_Entry_2017.csv"
# Kaggle split: images_001 holds the first 4,999 images, every later folder 10,000.
NIH_FIRST_FOLDER, NIH_PER_FOLDER = 4999, 10_000

COVID_COLUMNS = ["filename", "patientid", "finding", "covid", "view", "modality", "offset", "sex", "age"]

# Row counts in the real v2020 table; sqrt flattens them so rare findings still show up.
_NIH_COUNTS = {
    "Infiltration": 19894, "Effusion": 13317, "Atelectasis": 11559, "Nodule": 6331, "Mass": 5782,
    "Pneumothorax": 5302, "Consolidation": 4667, "Pleural_Thickening": 3385, "Cardiomegaly": 2776,
    "Emphysema": 2516, "Edema": 2303, "Fibrosis": 1686, "Pneumonia": 1431, "Hernia": 227,
}
DRAW = 256  # phantoms are drawn at this resolution and resampled to the requested size


@dataclass
class SynthSummary:
    out: Path
    layout: str
    images: int  # files written, i.e. rows in the label table (corrupt files included)
    patients: int
    special: dict[str, list[str]] = field(default_factory=dict)  # kind -> paths relative to out
    seconds: float = 0.0

    @property
    def corrupt(self) -> list[str]:
        return self.special.get("truncated", []) + self.special.get("empty", [])

    def line(self) -> str:
        ms = 1000 * self.seconds / max(self.images, 1)
        kinds = " ".join(f"{k}={len(v)}" for k, v in self.special.items() if v) or "none"
        return (f"synth {self.layout}: {self.images} images, {self.patients} patients -> {self.out} "
                f"in {self.seconds:.1f}s ({ms:.1f} ms/image); special: {kinds}")


# ----------------------------------------------------------------------------- drawing

_Y, _X = np.mgrid[0:DRAW, 0:DRAW].astype(np.float32) / (DRAW - 1)


def _ellipse(cx, cy, rx, ry, edge=0.02):
    """Soft-edged ellipse mask (1 inside, 0 outside) plus its normalised radius."""
    r = np.sqrt(((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2)
    return np.clip((1 - r) / (edge / min(rx, ry)) + 0.5, 0, 1), r


def _blob(cx, cy, sigma):
    return np.exp(-(((_X - cx) ** 2 + (_Y - cy) ** 2) / (2 * sigma * sigma)))


def _point_in(lung, rng, y_range=(0.0, 1.0)):
    """A random point inside a lung ellipse, optionally limited to a vertical band (0 = apex)."""
    cx, cy, rx, ry = lung
    t = rng.uniform(*y_range)
    y = cy - ry * 0.85 + t * 1.7 * ry
    half = rx * 0.8 * np.sqrt(max(1 - ((y - cy) / ry) ** 2, 0.05))
    return cx + rng.uniform(-half, half), y


def _paint(img, mask, value):
    img += mask * (value - img)


def _chest(labels: set[str], rng) -> np.ndarray:
    j = lambda s: rng.normal(0, s)  # noqa: E731  (position/size jitter)
    img = np.full((DRAW, DRAW), 12 + j(3), np.float32)
    _paint(img, _ellipse(0.5 + j(0.01), 0.58, 0.47 + j(0.01), 0.56, 0.04)[0], 112 + j(8))

    emph = "Emphysema" in labels
    grow = 1.13 if emph else 1.0
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * (0.19 + j(0.008)) * (1.06 if emph else 1.0)
        lungs.append((cx, 0.44 + j(0.01) + (0.02 if emph else 0), (0.145 + j(0.006)) * grow,
                      (0.275 + j(0.008)) * grow))
    masks = [_ellipse(*lung, 0.025) for lung in lungs]
    both = np.maximum(masks[0][0], masks[1][0])
    _paint(img, both, (27 if emph else 46) + j(4))

    # Posterior ribs: thin curved bands, only visible over the aerated lung.
    phase, dy = rng.uniform(0, 1), 0.5 * (_X - 0.5) ** 2
    img += both * (16 + j(3)) * (0.5 + 0.5 * np.cos(2 * np.pi * ((_Y + dy) * 11 + phase))) ** 6

    _paint(img, _ellipse(0.5 + j(0.005), 0.38, 0.06 + j(0.004), 0.30, 0.02)[0], 150 + j(6))
    img += _ellipse(0.5, 0.5, 0.022, 0.5, 0.01)[0] * 18  # spine through the mediastinum
    big = "Cardiomegaly" in labels
    hx, hy = 0.54 + j(0.008) + (0.03 if big else 0), 0.62 + j(0.008)
    hrx = (0.115 + j(0.006)) * (1.55 if big else (0.88 if emph else 1.0))
    hry = (0.095 + j(0.005)) * (1.25 if big else 1.0)
    heart = _ellipse(hx, hy, hrx, hry, 0.02)[0]
    _paint(img, heart, 172 + j(6))

    side = int(rng.integers(2))  # the lung a one-sided finding lands in
    lung, (lmask, _) = lungs[side], masks[side]
    for name in sorted(labels):
        if name == "Effusion":  # fluid with a meniscus climbing laterally: blunted angle
            for s in ((0, 1) if rng.random() < 0.3 else (side,)):
                cx, cy, rx, ry = lungs[s]
                lateral = np.clip((np.abs(_X - 0.5) - abs(cx - 0.5)) / rx + 1, 0, 2)
                level = cy + ry * rng.uniform(0.3, 0.55) - 0.05 * lateral
                _paint(img, masks[s][0] * np.clip((_Y - level) / 0.02 + 0.5, 0, 1), 150 + j(8))
        elif name == "Pneumothorax":  # collapsed lung pulled medially/down, black air at apex
            cx, cy, rx, ry = lung
            f = rng.uniform(0.6, 0.78)
            inner = _ellipse(cx + (1 if side == 0 else -1) * rx * (1 - f) * 0.6, cy + ry * (1 - f) * 0.5,
                             rx * f, ry * f, 0.01)[0]
            _paint(img, lmask * (1 - inner) * (1 - heart), 6)
        elif name == "Nodule":
            for _ in range(rng.integers(1, 4)):
                cx, cy = _point_in(lungs[rng.integers(2)], rng)
                r = rng.uniform(0.012, 0.02)
                img += _ellipse(cx, cy, r, r, 0.008)[0] * (85 + j(8))
        elif name == "Mass":
            cx, cy = _point_in(lung, rng, (0.15, 0.7))
            r = rng.uniform(0.045, 0.07)
            img += _ellipse(cx, cy, r, r * rng.uniform(0.85, 1.1), 0.015)[0] * (80 + j(8))
        elif name == "Infiltration":  # several small hazy patches anywhere in both lungs
            patch = sum(_blob(*_point_in(lungs[rng.integers(2)], rng), rng.uniform(0.022, 0.035))
                        for _ in range(rng.integers(4, 8)))
            img += both * np.minimum(patch, 1) * (42 + j(5))
        elif name == "Pneumonia":  # one or two larger patches, lower half of one lung
            patch = sum(_blob(*_point_in(lung, rng, (0.5, 0.95)), rng.uniform(0.045, 0.065))
                        for _ in range(rng.integers(1, 3)))
            img += lmask * np.minimum(patch, 1) * (55 + j(5))
        elif name == "Consolidation":  # one dense plateau-shaped patch, mid/lower zone
            patch = _blob(*_point_in(lung, rng, (0.35, 0.85)), rng.uniform(0.06, 0.08))
            img += lmask * np.minimum(patch * 1.8, 1) * (80 + j(6))
        elif name == "Atelectasis":  # thin bright plate-like band, lower-mid zone
            cx, cy = _point_in(lung, rng, (0.45, 0.8))
            th = rng.uniform(-0.35, 0.35)
            d = (_X - cx) * np.sin(th) - (_Y - cy) * np.cos(th)
            img += lmask * np.exp(-((d / rng.uniform(0.012, 0.018)) ** 2)) * (65 + j(6))
        elif name == "Edema":  # central bilateral "bat wing" haze
            img += both * _blob(0.5, 0.47 + j(0.02), 0.16) * (60 + j(6))
        elif name == "Fibrosis":  # reticular net, peripheral and basal
            ph, k = rng.uniform(0, 1, 2), rng.uniform(13, 16)
            a = np.sin(2 * np.pi * (k * (_X + 0.05 * np.sin(2 * np.pi * 3 * _Y)) + ph[0]))
            b = np.sin(2 * np.pi * (k * (_Y + 0.05 * np.sin(2 * np.pi * 3 * _X)) + ph[1]))
            net = np.maximum(np.exp(-((a / 0.2) ** 2)), np.exp(-((b / 0.2) ** 2)))
            img += both * net * np.clip((_Y - 0.25) / 0.3, 0.2, 1) * (40 + j(4))
        elif name == "Pleural_Thickening":  # bright rim hugging the lateral/apical lung border
            for s in ((0, 1) if rng.random() < 0.4 else (side,)):
                cx = lungs[s][0]
                lateral = np.clip((np.abs(_X - 0.5) - np.abs(cx - 0.5) + 0.06) / 0.1, 0, 1)
                rim = np.exp(-(((masks[s][1] - 0.95) / 0.045) ** 2))
                img += rim * lateral * (60 + j(5))
        elif name == "Hernia":  # retrocardiac mass with an air-fluid level
            cx, cy = 0.5 + j(0.02), hy + hry * 0.75 + j(0.01)
            sac = _ellipse(cx, cy, 0.075, 0.055, 0.012)[0]
            img += sac * (55 + j(5))
            _paint(img, sac * (_Y < cy - 0.012), 70)
        elif name == COVID_PATTERN:  # bilateral, peripheral, lower-zone ground glass
            for cx, cy, rx, ry in lungs:
                zone = np.clip((_Y - cy) / 0.12 + 0.5, 0, 1) * np.clip(
                    (np.abs(_X - 0.5) - abs(cx - 0.5) + 0.02) / 0.05 + 0.5, 0, 1)
                mottle = sum(_blob(cx + np.sign(cx - 0.5) * rx * rng.uniform(0.2, 0.8),
                                   cy + ry * rng.uniform(0.0, 0.75), rng.uniform(0.025, 0.045))
                             for _ in range(5))
                img += both * zone * (30 + 30 * np.minimum(mottle, 1)) * rng.uniform(0.85, 1.15)
        elif name == LOBAR_PATTERN:  # one lobe, dense, sharp edge along the fissure
            cx, cy, rx, ry = lung
            fissure = cy + rng.uniform(-0.15, 0.15) * ry + 0.3 * (_X - cx)
            lobe = (_Y > fissure) if rng.random() < 0.6 else (_Y < fissure)
            _paint(img, lmask * lobe * _ellipse(cx, cy, rx * 0.97, ry * 0.97, 0.03)[0], 145 + j(8))
    return img


def _other_view(view: str, rng) -> np.ndarray:
    """Lateral and axial-CT stand-ins: plausible enough to be recognisably not a frontal film."""
    j = lambda s: rng.normal(0, s)  # noqa: E731
    img = np.full((DRAW, DRAW), 10.0, np.float32)
    if view == "CT":
        _paint(img, _ellipse(0.5, 0.5, 0.45 + j(0.01), 0.32 + j(0.01), 0.02)[0], 120)
        for cx in (0.32, 0.68):
            _paint(img, _ellipse(cx + j(0.01), 0.46, 0.14, 0.22, 0.02)[0], 8)
        _paint(img, _ellipse(0.5, 0.74, 0.05, 0.05, 0.01)[0], 230)
        _paint(img, _ellipse(0.52, 0.36, 0.1, 0.08, 0.02)[0], 140)
    else:  # lateral: one superimposed lung field, heart in front, spine behind
        _paint(img, _ellipse(0.5, 0.56, 0.4 + j(0.01), 0.55, 0.04)[0], 115)
        _paint(img, _ellipse(0.5 + j(0.01), 0.46, 0.25, 0.3, 0.03)[0], 55)
        _paint(img, _ellipse(0.36, 0.63, 0.12, 0.12, 0.02)[0], 160)
        _paint(img, _ellipse(0.76, 0.5, 0.04, 0.38, 0.01)[0], 175)
    return img


def phantom_image(labels: list[str], size: int, rng: np.random.Generator, view: str = "PA") -> np.ndarray:
    """A ``size`` x ``size`` uint8 grayscale chest phantom showing ``labels``.

    ``labels`` holds NIH finding names, ``"COVID-19"`` or ``"Lobar_Consolidation"``; ``"No Finding"``
    and an empty list give a normal chest. ``view`` "L" (lateral) or "CT" draw a non-frontal image.
    """
    wanted = {s for s in labels if s and s != NO_FINDING}
    unknown = wanted - set(FINDINGS) - {COVID_PATTERN, LOBAR_PATTERN}
    if unknown:
        raise ValueError(f"unknown phantom labels: {sorted(unknown)}")
    img = _other_view(view, rng) if view in ("L", "CT") else _chest(wanted, rng)
    img += rng.normal(0, 3, img.shape).astype(np.float32)  # coarse mottle, survives downscaling
    # Clipped to [4, 247] so the +-4 grain below can be added in uint8 without wrapping.
    pil = Image.fromarray(np.clip(img, 4, 247).astype(np.uint8))
    if size != DRAW:
        pil = pil.resize((size, size), Image.BILINEAR)
    out = np.array(pil)
    out -= 4
    out += rng.integers(0, 9, (size, size), dtype=np.uint8)  # fine grain at the output size
    return out


# ----------------------------------------------------------------------------- writing

def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_gray8(arr: np.ndarray) -> bytes:
    """8-bit grayscale PNG, ~3x faster than Pillow on noisy images at similar size.

    Every row uses the Sub filter (computed in one numpy call) and zlib runs Huffman-only; Pillow's
    per-row adaptive filtering plus LZ77 matching is what makes its encoder slow on grain.
    """
    h, w = arr.shape
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0], raw[:, 1] = 1, arr[:, 0]
    np.subtract(arr[:, 1:], arr[:, :-1], out=raw[:, 2:])
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    idat = z.compress(raw.tobytes()) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encode(arr: np.ndarray, kind: str, rng) -> bytes:
    """Encode one image the way ``kind`` says."""
    if kind in ("", "crop", "truncated"):
        return png_gray8(arr)
    im = Image.fromarray(arr)
    if kind == "rgba":
        im = im.convert("RGBA")  # alpha 255 everywhere, like the odd real NIH file
    elif kind == "16bit":
        # A real detector range, deliberately not 0..65535: readers must rescale by min/max.
        lo, hi = int(rng.integers(500, 2000)), int(rng.integers(30000, 42000))
        im = Image.fromarray((lo + arr.astype(np.float32) * ((hi - lo) / 255)).astype(np.uint16))
    elif kind == "rgb_jpeg":
        # Grey with a faint tint, as scanned films often are: readers must convert, not take R.
        rgb = np.stack([arr, arr, np.clip(arr.astype(np.int16) + 6, 0, 255).astype(np.uint8)], -1)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        return buf.getvalue()
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _render(job) -> None:
    out, rel, labels, view, kind, size, seed, idx = job
    rng = np.random.default_rng([seed, idx])
    path = out / rel
    if kind == "empty":
        path.write_bytes(b"")
        return
    arr = phantom_image(labels, size, rng, view)
    if kind == "crop":  # non-square, like most COVID-set images: trim the air above the shoulders
        arr = arr[int(rng.integers(0, size // 8)):]
    data = _encode(arr, kind, rng)
    if kind == "truncated":
        data = data[: len(data) // 2]
    path.write_bytes(data)


def _run(jobs: list, workers: int) -> None:
    for d in {(j[0] / j[1]).parent for j in jobs}:
        d.mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        for job in jobs:
            _render(job)
        return
    with mp.get_context().Pool(workers, initializer=ignore_sigint) as pool:
        for _ in pool.imap_unordered(_render, jobs, chunksize=8):
            pass


def _special_kinds(n: int, rng, plan: dict[str, int]) -> list[str]:
    """Per-row kind ("" = plain) with ``plan[kind]`` rows of each special kind, seeded positions."""
    kinds = [""] * n
    picks = rng.permutation(n)
    i = 0
    for kind, k in plan.items():
        for p in picks[i:i + k]:
            kinds[p] = kind
        i += k
    return kinds


def nih_folder(position: int) -> str:
    """Kaggle folder of the image at ``position`` in Image Index order (0-based)."""
    if position < NIH_FIRST_FOLDER:
        return "images_001"
    return f"images_{2 + (position - NIH_FIRST_FOLDER) // NIH_PER_FOLDER:03d}"


def _nih_labels(followup: np.ndarray, rng) -> list[str]:
    names, n = list(_NIH_COUNTS), len(followup)
    w = np.sqrt(np.array(list(_NIH_COUNTS.values()), float))
    w /= w.sum()
    labels = []
    for fu in followup:
        if fu and rng.random() < 0.5:  # follow-ups often keep the previous findings
            labels.append(labels[-1])
        elif rng.random() < 0.45:
            labels.append(NO_FINDING)
        else:
            k = 1 if rng.random() < 0.64 else int(rng.integers(2, 4))  # ~20% of rows multi-label
            labels.append("|".join(sorted(rng.choice(names, k, replace=False, p=w))))
    # Guarantee a few of every finding so each class has positives even in small sets.
    need = min(3, n // 50)
    for name in names:
        have = sum(name in lab.split("|") for lab in labels)
        for i in rng.permutation(n)[: max(need - have, 0) * 3]:
            if have >= need:
                break
            if name not in labels[i].split("|"):
                cur = [] if labels[i] == NO_FINDING else labels[i].split("|")
                labels[i] = "|".join(sorted(cur + [name]))
                have += 1
    return labels


def _nih_table(count: int, rng) -> pd.DataFrame:
    n_pat = max(1, round(count / 3))
    # Skewed images per patient: many have one, a few have a dozen or more (as in the real table).
    w = rng.gamma(0.5, 1.0, n_pat)
    per = np.bincount(rng.choice(n_pat, count - n_pat, p=w / w.sum()), minlength=n_pat) + 1
    labels = _nih_labels(np.concatenate([np.arange(k) for k in per]) > 0, rng)
    rows, i = [], 0
    for pid, k in enumerate(per, start=1):
        age, sex = int(np.clip(rng.normal(47, 17), 1, 95)), "M" if rng.random() < 0.56 else "F"
        for fu in range(k):
            w_, h_ = int(rng.integers(2000, 3057)), int(rng.integers(2000, 3057))
            sp = float(rng.choice([0.143, 0.139, 0.168]))
            rows.append([f"{pid:08d}_{fu:03d}.png", labels[i], fu, pid, min(age + fu // 4, 95), sex,
                         "PA" if rng.random() < 0.6 else "AP", w_, h_, sp, sp])
            i += 1
    return pd.DataFrame(rows, columns=NIH_COLUMNS)


def _nih_from_csv(path: Path, count: int, rng) -> pd.DataFrame:
    real = pd.read_csv(path)
    if list(real.columns) != NIH_COLUMNS:
        raise DataError(f"{path}: not a Data_Entry_2017 table (columns {list(real.columns)})")
    if count > len(real):
        raise DataError(f"{path} has {len(real)} rows, asked for {count}")
    sizes = real.groupby("Patient ID").size()
    chosen, left = [], count
    # Whole patients only; skipping ones that overshoot lands exactly on count (singletons abound).
    for pid in rng.permutation(sizes.index.to_numpy()):
        if sizes[pid] <= left:
            chosen.append(pid)
            left -= sizes[pid]
            if not left:
                break
    if left:
        raise DataError(f"could not pick whole patients adding up to {count} rows")
    # Keep each image in the Kaggle folder the real file lives in (its position in the full table).
    real["_folder"] = [nih_folder(i) for i in real["Image Index"].rank(method="first").astype(int) - 1]
    return real[real["Patient ID"].isin(chosen)]


MIN_SIZE, MAX_SIZE = 16, 8192
# In the folder while a generation runs (its CSV is written last): a rerun after an interruption
# starts again instead of refusing a folder that is not empty.
INCOMPLETE = ".cxrjobs-synth-incomplete"


def check_synth_args(out: Path, count: int, size: int, workers: int) -> None:
    """Clear errors for arguments that would otherwise fail deep inside (or write nothing)."""
    if count < 1:
        raise DataError(f"--count {count}: the number of images must be at least 1")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"--size {size}: the image side must be between {MIN_SIZE} and {MAX_SIZE} pixels")
    if workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise DataError(f"--out {out}: {p} is a file, not a folder; choose a folder to create")
            break
    if (out / INCOMPLETE).is_file():  # this command's own interrupted run: start it again
        shutil.rmtree(out)
    if out.is_dir() and any(out.iterdir()):
        # The new CSV would list only the new images among the old ones: preprocessing then
        # rejected most files, or mixed two sets of other sizes and seeds.
        raise DataError(f"--out {out}: the folder is not empty; phantom data written into it would mix with "
                        "what is there. Choose a new or empty folder (or delete this one first)")


def synth_nih(out: Path, count: int, size: int = 1024, seed: int = 0, from_csv: Path | None = None,
              special: bool = True, workers: int = 1) -> SynthSummary:
    """Write ``count`` phantom images in the NIH ChestX-ray14 Kaggle layout under ``out``.

    With ``from_csv`` (a real Data_Entry_2017 csv, .gz fine) whole real patients are drawn until
    exactly ``count`` rows and their Image Index / labels / demographics are kept verbatim.
    """
    check_synth_args(out, count, size, workers)
    t0, out, rng = time.perf_counter(), Path(out), np.random.default_rng(seed)
    table = _nih_from_csv(Path(from_csv), count, rng) if from_csv else _nih_table(count, rng)
    table = table.sort_values("Image Index").reset_index(drop=True)
    n = len(table)
    folders = table.pop("_folder") if "_folder" in table else [nih_folder(i) for i in range(n)]
    few = max(1, round(n * 0.01)) if special and n >= 20 else 0
    plan = {"rgba": few, "16bit": few, "truncated": int(few > 0), "empty": int(few > 0)}
    kinds = _special_kinds(n, rng, plan)
    jobs, spec = [], {k: [] for k in plan}
    for i, row in enumerate(table.itertuples(index=False)):
        rel = f"{folders[i]}/images/{row[0]}"
        if kinds[i]:
            spec[kinds[i]].append(rel)
        jobs.append((out, rel, row[1].split("|"), row[6], kinds[i], size, seed, i))
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("a phantom set is being written here; a rerun of the command starts it again\n")
    _run(jobs, workers)
    table.to_csv(out / NIH_CSV, index=False)
    (out / INCOMPLETE).unlink()
    return SynthSummary(out, "nih", n, int(table["Patient ID"].nunique()), spec, time.perf_counter() - t0)


_COVID_FINDINGS = [("COVID-19", 0.7), ("Pneumonia/Viral/COVID-19", 0.2), ("COVID-19, ARDS", 0.1)]
_OTHER_FINDINGS = [("No Finding", 0.35), ("Pneumonia/Bacterial/Streptococcus", 0.2),
                   ("Pneumonia/Viral/SARS", 0.15), ("Pneumonia/Bacterial/Klebsiella", 0.1),
                   ("Pneumonia/Fungal/Pneumocystis", 0.1), ("Pneumonia/Bacterial/E.Coli", 0.1)]


def synth_covid(out: Path, count: int, size: int = 1024, seed: int = 0, special: bool = True,
                workers: int = 1) -> SynthSummary:
    """Write ``count`` phantom images in the ieee8023 covid-chestxray-dataset layout under ``out``.

    ``metadata.csv`` keeps the rows a reader must drop: ~5% lateral (view "L") and ~3% CT
    (modality "CT", view "Axial"). ``covid`` is 1 exactly when ``finding`` contains "COVID-19".
    """
    check_synth_args(out, count, size, workers)
    t0, out, rng = time.perf_counter(), Path(out), np.random.default_rng(seed)
    rows, pid = [], 0
    while len(rows) < count:
        pid += 1
        is_covid = rng.random() < 0.6
        names, p = zip(*(_COVID_FINDINGS if is_covid else _OTHER_FINDINGS))
        finding = str(rng.choice(names, p=p))
        sex, age = str(rng.choice(["M", "F", ""], p=[0.55, 0.4, 0.05])), int(rng.integers(20, 90))
        offset = 0
        for k in range(min(int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])), count - len(rows))):
            u = rng.random()
            modality, view = ("CT", "Axial") if u < 0.03 else ("X-ray", "L") if u < 0.08 else (
                "X-ray", str(rng.choice(["PA", "AP", "AP Supine"], p=[0.6, 0.15, 0.25])))
            offset += int(rng.integers(1, 6)) if k else 0
            folder = "covid" if is_covid else "non_covid"
            rows.append([f"{folder}/synth-{pid:04d}-day{offset}-{view.replace(' ', '')}.png", pid, finding,
                         int(is_covid), view, modality, offset, sex, age])
    table = pd.DataFrame(rows, columns=COVID_COLUMNS)
    n = len(table)
    few = max(1, round(n * 0.02)) if special and n >= 20 else 0
    plan = {"rgb_jpeg": 4 * few, "rgba": few, "truncated": int(few > 0)}
    kinds = _special_kinds(n, rng, plan)
    jobs, spec = [], {k: [] for k in plan}
    spec.update(lateral=[], ct=[])
    for i, r in table.iterrows():
        if kinds[i] == "rgb_jpeg":
            table.at[i, "filename"] = r.filename[:-4] + ".jpg"
        rel = table.at[i, "filename"]
        if kinds[i]:
            spec[kinds[i]].append(rel)
        if r.view in ("L", "Axial"):
            spec["lateral" if r.view == "L" else "ct"].append(rel)
        pattern = [COVID_PATTERN] if r.covid else [] if r.finding == NO_FINDING else [LOBAR_PATTERN]
        view = "CT" if r.modality == "CT" else r.view
        jobs.append((out, rel, pattern, view, kinds[i] or "crop", size, seed, i))
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("a phantom set is being written here; a rerun of the command starts it again\n")
    _run(jobs, workers)
    table.to_csv(out / "metadata.csv", index=False)
    (out / INCOMPLETE).unlink()
    return SynthSummary(out, "covid", n, int(table["patientid"].nunique()), spec, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic chest X-ray dataset in a real layout.")
    ap.add_argument("layout", choices=["nih", "covid"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-csv", type=Path, help="NIH only: key images to rows of a real Data_Entry csv")
    ap.add_argument("--no-special", action="store_true", help="no RGBA/16-bit/corrupt files")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args(argv)
    common = dict(size=a.size, seed=a.seed, special=not a.no_special, workers=a.workers)
    if a.layout == "nih":
        s = synth_nih(a.out, a.count, from_csv=a.from_csv, **common)
    else:
        s = synth_covid(a.out, a.count, **common)
    print(s.line())


if __name__ == "__main__":
    main()
