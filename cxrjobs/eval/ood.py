""""Not a chest X-ray": an out-of-distribution detector fitted on a run's training distribution.

Each image becomes one vector: the model's penultimate features (what the classifier looks at)
next to simple statistics of the decoded gray image the model sees (a 16x16 layout thumbnail, a
histogram and quantiles, power in frequency bands, contrast, edge density, flat area, symmetry). The score is a Mahalanobis
distance with one covariance shared by all classes (Lee et al., 2018) and one mean per class,
the smallest over classes. The shared covariance is estimated as a probabilistic PCA (top
components plus an isotropic residual), which stays well-conditioned with far fewer training
images than dimensions and scores anything off the X-ray subspace as far. The threshold is the
99th percentile of the distances of the run's *validation* images. Separately, a colour image
(chroma above a fixed limit) is never a radiograph: `predict` flags it before the model runs.

Stored as runs/<run>/ood.json; `predict` applies it and `evaluate` reports how many images it
flags. Fitted at the end of training (Trainer._finish) and lazily when a run has none.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from cxrjobs.storage import ObjectStore, join_key

QUANTILE = 0.99          # of validation distances: the threshold
COLOUR_LIMIT = 12.0      # mean chroma (max-min of R,G,B, 0..255) above which an image is colour
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MAX_FIT_IMAGES = 4000    # training images used to fit (a seeded subset of larger splits)
VERSION = 3  # bump when image_stats changes: older ood.json files are refitted


def colourfulness(data: bytes) -> float:
    """Mean chroma of the image at thumbnail size; 0 for grayscale modes (no decode needed)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        if im.mode in GRAY_MODES:
            return 0.0
        if im.format == "JPEG":
            im.draft("RGB", (64, 64))
        im = im.convert("RGB")
        im.thumbnail((64, 64))
        a = np.asarray(im, dtype=np.int16)
    except Exception:  # undecodable files are reported by the decoder, not here
        return 0.0
    return float((a.max(axis=2) - a.min(axis=2)).mean())


STATS_DIMS = 256 + 16 + 7 + 6 + 12
STATS_SIZE = 64          # statistics are taken on the image area-averaged to at most 64 x 64
FFT_BANDS = (0, 0.03, 0.06, 0.12, 0.25, 0.5, 1.0)   # radial frequency bands, cycles per pixel


def image_stats(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """[n, S, S] (or [n, 1, S, S]) uint8 -> [n, STATS_DIMS] statistics of what the model sees
    (area-averaged to STATS_SIZE first):
    16x16 layout thumbnail, 16-bin histogram, 7 quantiles, log power in 6 radial frequency bands,
    and contrast / edge / flatness / symmetry measures."""
    shape = np.shape(images)
    n = shape[0]
    if n == 0:
        return np.zeros((0, STATS_DIMS))
    x = torch.as_tensor(np.asarray(images)).float().reshape(n, 1, shape[-2], shape[-1]) / 255.0
    if max(shape[-2:]) > STATS_SIZE:  # the same statistics at any model size, and cheap
        x = F.adaptive_avg_pool2d(x, STATS_SIZE)
    shape = x.shape
    flat = x.reshape(n, -1)
    thumb = F.adaptive_avg_pool2d(x, 16).reshape(n, 256)
    bins = torch.clamp((flat * 16).long(), max=15)
    hist = torch.zeros((n, 16)).scatter_add_(1, bins, torch.ones_like(flat)) / flat.shape[1]
    quant = torch.quantile(flat, torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]), dim=1).T
    power = torch.fft.rfft2(x[:, 0] - x[:, 0].mean((1, 2), keepdim=True)).abs() ** 2
    radius = torch.sqrt(torch.fft.fftfreq(shape[-2]).abs()[:, None] ** 2 + torch.fft.rfftfreq(shape[-1])[None] ** 2)
    total = power.sum((1, 2)) + 1e-9
    bands = torch.stack([(power * ((radius >= a) & (radius < b))).sum((1, 2)) / total
                         for a, b in zip(FFT_BANDS[:-1], FFT_BANDS[1:])], 1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().reshape(n, -1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().reshape(n, -1)
    half = shape[-1] // 2
    extra = torch.stack([
        flat.mean(1), flat.std(1), (flat == 0).float().mean(1), (flat >= 250 / 255).float().mean(1),
        dx.mean(1), dy.mean(1),
        (dx == 0).float().mean(1),    # flat areas: drawings, blank frames, padding
        (dx > 0.25).float().mean(1),  # hard edges: text, line art, noise
        dx.std(1), dy.std(1),
        F.adaptive_avg_pool2d(x, 2).reshape(n, 4).std(1),  # left/right/top/bottom balance
        (x[..., :, :half] - x[..., :, -half:].flip(-1)).abs().mean((1, 2, 3)),  # left-right symmetry
    ], dim=1)
    return torch.cat([thumb, hist, quant, torch.log(bands + 1e-6), extra], dim=1).double().numpy()


@dataclass
class OODDetector:
    mean: list            # z-scoring of the joint vector
    scale: list
    class_means: list     # [K, d] in z-space (one row for a multilabel run)
    components: list      # [d, k] top principal directions of the shared within-class covariance
    variances: list       # [k]
    residual: float       # isotropic variance off those directions
    threshold: float      # distance (sqrt of the squared Mahalanobis) at QUANTILE of validation
    colour_limit: float = COLOUR_LIMIT
    decision_threshold: float | None = None   # binary runs: Youden's J cut-off on validation
    info: dict = field(default_factory=dict)
    version: int = VERSION

    def distance(self, z: np.ndarray) -> np.ndarray:
        v = (z - np.asarray(self.mean)) / np.asarray(self.scale)
        U, lam = np.asarray(self.components), np.asarray(self.variances)
        best = None
        for mu in np.asarray(self.class_means):
            c = v - mu
            proj = c @ U
            resid = (c * c).sum(1) - (proj * proj).sum(1)
            d2 = (proj * proj / lam).sum(1) + np.maximum(resid, 0) / self.residual
            best = d2 if best is None else np.minimum(best, d2)
        return np.sqrt(best)

    def score(self, feats: np.ndarray, images: np.ndarray, colour: np.ndarray | None = None) -> dict:
        """{'ood': bool[n], 'score': float[n] (>1 means flagged), 'reason': str[n]}."""
        dist = self.distance(np.hstack([feats, image_stats(images)]))
        s_dist = dist / self.threshold
        s_col = (np.zeros(len(dist)) if colour is None else np.asarray(colour) / self.colour_limit)
        score = np.maximum(s_dist, s_col)
        reason = np.where(s_col > 1, "colour image", np.where(s_dist > 1, "far from the training X-rays", ""))
        return {"ood": score > 1, "score": score, "reason": reason.tolist()}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "OODDetector":
        return cls(**json.loads(text))


def fit(train: np.ndarray, labels: np.ndarray | None, val: np.ndarray, explained: float = 0.95) -> OODDetector:
    """Fit on joint vectors [n, d] of training images (labels: class index per image, or None),
    threshold at the QUANTILE of the validation images' distances."""
    train = np.asarray(train, np.float64)
    mean = train.mean(0)
    scale = train.std(0)
    scale = np.where(scale > 1e-6 * max(scale.max(), 1e-12), scale, max(scale.max(), 1.0))
    z = (train - mean) / scale
    groups = np.zeros(len(z), dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
    means, centred = [], np.empty_like(z)
    for g in np.unique(groups):
        m = z[groups == g].mean(0)
        means.append(m)
        centred[groups == g] = z[groups == g] - m
    n, d = centred.shape
    _, s, vt = np.linalg.svd(centred / np.sqrt(max(n - len(means), 1)), full_matrices=False)
    eig = s ** 2
    k = int(np.searchsorted(np.cumsum(eig) / eig.sum(), explained) + 1)
    k = max(1, min(k, max(1, n // 5), d - 1))
    rest = eig[k:].sum() / max(d - k, 1)
    residual = float(max(rest, 1e-3 * eig[0]))
    det = OODDetector(mean.tolist(), scale.tolist(), np.asarray(means).tolist(), vt[:k].T.tolist(),
                      np.maximum(eig[:k], residual).tolist(), residual, 1.0)
    vd = det.distance(np.asarray(val, np.float64))
    det.threshold = float(np.quantile(vd, QUANTILE)) if len(vd) else float(np.quantile(det.distance(train), QUANTILE))
    det.info = {"train_images": int(n), "val_images": int(len(vd)), "dims": int(d), "components": k,
                "quantile": QUANTILE, "threshold_from": "validation" if len(vd) else "training (no validation images)"}
    return det


# --- a run's detector ------------------------------------------------------------------------------

def ood_key(run: str) -> str:
    return join_key("runs", run, "ood.json")


class _Subset:
    """A seeded subset of a ShardDataset that keeps its batch gathering."""

    def __init__(self, ds, idx: np.ndarray):
        self.ds, self.idx = ds, np.sort(idx)
        self.num_classes = ds.num_classes
        self.targets = ds.targets[torch.from_numpy(self.idx)]

    def __len__(self):
        return len(self.idx)

    def __getitems__(self, indices):
        return self.ds.__getitems__(self.idx[np.asarray(indices, dtype=np.int64)])


def _joint(rm, ds, ctx, batch_size: int) -> tuple[np.ndarray, torch.Tensor]:
    from cxrjobs.eval.predict import predict_dataset

    logits, feats = predict_dataset(rm.model, ds, ctx, batch_size, features=True, normalize=rm.normalize)
    stats = np.concatenate([image_stats(ds.__getitems__(np.arange(i, min(i + 512, len(ds))))[0])
                            for i in range(0, len(ds), 512)] or [np.zeros((0, STATS_DIMS))])
    return np.hstack([feats.numpy(), stats]), logits


def fit_for_run(store: ObjectStore, run: str, ctx=None, data: dict | None = None, batch_size: int = 128,
                log=print, rm=None) -> OODDetector:
    """Fit the run's detector on its training split (best.pt's features), threshold on its
    validation split, and (rank 0) store runs/<run>/ood.json. Every rank of `ctx` must call it.
    `data`: the run's {"train", "val"} ShardDatasets when the caller has them open."""
    from cxrjobs.eval.metrics import binary_targets, is_binary, positive_scores, youden_threshold
    from cxrjobs.eval.predict import load_run
    from cxrjobs.train.distributed import DistContext

    ctx = ctx or DistContext(0, 1, torch.device("cpu"), None)
    rm = rm or load_run(store, run, ctx.device)
    if data is None:
        from cxrjobs.data.shards import ShardDataset
        from cxrjobs.train.loop import resolve_dataset
        root = resolve_dataset(rm.data, store)
        data = {s: ShardDataset(root, s, rm.objective) for s in ("train", "val")}
    train, val = data["train"], data["val"]
    if len(train) > MAX_FIT_IMAGES:
        train = _Subset(train, np.random.default_rng(0).choice(len(train), MAX_FIT_IMAGES, replace=False))
    z_train, _ = _joint(rm, train, ctx, batch_size)
    z_val, val_logits = _joint(rm, val, ctx, batch_size)
    labels = train.targets.numpy() if rm.objective == "multiclass" else None
    det = fit(z_train, labels, z_val)
    if is_binary(rm.objective, len(rm.class_names)) and len(val):
        cut = youden_threshold(positive_scores(rm.objective, val_logits), binary_targets(rm.objective, val.targets))
        det.decision_threshold = cut["value"]
        det.info["decision_threshold_method"] = cut["method"]
    det.info["val_flagged"] = float(np.mean(det.distance(z_val) > det.threshold)) if len(z_val) else None
    if ctx.is_main:
        store.put_text(ood_key(run), det.to_json())
        log(f"OOD detector for {run}: {det.info['components']} components over {det.info['dims']} "
            f"dims from {det.info['train_images']} training images; threshold {det.threshold:.2f} "
            f"(99th percentile of {det.info['val_images']} validation images) -> {store.url}/{ood_key(run)}")
    return det


def load_for_run(store: ObjectStore, run: str, ctx=None, rm=None, log=print) -> OODDetector:
    """runs/<run>/ood.json, fitted now (and stored) when the run has none."""
    key = ood_key(run)
    if store.exists(key):
        try:
            det = OODDetector.from_json(store.get_text(key))
            if det.version == VERSION:
                return det
        except (TypeError, ValueError):
            pass
        log(f"{store.url}/{key} is from another version; fitting it again")
    return fit_for_run(store, run, ctx, rm=rm, log=log)
