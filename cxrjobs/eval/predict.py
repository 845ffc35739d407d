"""Prediction outside the training loop: logits over a dataset split (DDP-gathered, exactly the
split's images, no sampler padding), a trained run loaded from its checkpoint alone, and
prediction on image files with the preprocessing the checkpoint records.

Trainer.evaluate, the `evaluate` job, the OOD detector and `cxrjobs predict` all go through
`predict_dataset` / `load_run`, so every score is computed the same way.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cxrjobs.data.shards import passthrough
from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.runs import search_note, training_note

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


# --- logits (and penultimate features) over a dataset --------------------------------------------

def head_layer(model: nn.Module) -> nn.Linear:
    """The last Linear layer: its input is the penultimate feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CxrError(f"{type(model).__name__} has no Linear head; cannot take penultimate features")
    return linears[-1]


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor, features: bool = False):
    """Logits of a normalised batch, and with `features` the head's input (penultimate layer)."""
    if not features:
        return model(x), None
    got: list[torch.Tensor] = []
    hook = head_layer(model).register_forward_hook(lambda m, inp, out: got.append(inp[0]))
    try:
        logits = model(x)
    finally:
        hook.remove()
    return logits, got[0].flatten(1)


class eval_mode:
    """Evaluation mode for the duration, then every module's own training flag back (frozen
    layers that the Trainer keeps in eval mode stay there)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.training = flag


@torch.no_grad()
def predict_dataset(model: nn.Module, ds, ctx, batch_size: int, features: bool = False,
                    normalize=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits [n, C], penultimate features [n, D] or None) for every image of `ds`, in `ds`
    order. Rank r scores images r, r+W, ...; the parts are all-gathered and put back in order, so
    each image counts once (no DistributedSampler padding). Every rank must call it."""
    from cxrjobs.data.transforms import prepare

    normalize = normalize or prepare
    mine = list(range(ctx.rank, len(ds), ctx.world_size))
    cuda = ctx.device.type == "cuda"  # uint8 batches pinned, copied without blocking the host
    loader = DataLoader(ds, batch_size=max(1, batch_size), sampler=mine, collate_fn=passthrough,
                        pin_memory=cuda)
    outs, feats = [], []
    with eval_mode(model):
        for x, _ in loader:
            logits, f = forward(model, normalize(x.to(ctx.device, non_blocking=cuda)), features)
            outs.append(logits.float())  # kept on the device: no host sync per batch
            if features:
                feats.append(f.float())
    logits = torch.cat(outs).cpu() if outs else torch.zeros((0, ds.num_classes))
    feat = (torch.cat(feats).cpu() if feats else torch.zeros((0, 0))) if features else None
    if ctx.distributed:
        parts: list = [None] * ctx.world_size
        dist.all_gather_object(parts, (mine, logits, feat))
        idx = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
        order = torch.from_numpy(np.argsort(idx))
        logits = torch.cat([p[1] for p in parts])[order]
        if features:
            feat = torch.cat([p[2] for p in parts if len(p[2])])[order] if len(idx) else feat
    return logits, feat


# --- a trained run, from its checkpoint ----------------------------------------------------------

@dataclass
class RunModel:
    """A run's best model and the input recipe it was trained with."""
    run: str
    model: nn.Module
    arch: str
    class_names: list[str]
    objective: str
    image_size: int
    fit: str
    mean: float
    std: float
    spec: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    @property
    def data(self) -> str:
        return self.spec.get("data", "")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B,1,S,S] -> the model's input, with the training loop's own normalisation."""
        from cxrjobs.data import transforms

        if (abs(self.mean - transforms.MEAN) > 1e-9 or abs(self.std - transforms.STD) > 1e-9):
            raise CxrError(f"run {self.run} was trained with normalisation mean {self.mean}, std "
                           f"{self.std}; this version normalises with {transforms.MEAN}, "
                           f"{transforms.STD}: use the cxrjobs version that trained it")
        return transforms.prepare(x)

    def recipe(self) -> dict:
        return {"arch": self.arch, "class_names": self.class_names, "objective": self.objective,
                "image_size": self.image_size, "fit": self.fit,
                "normalization": {"mean": self.mean, "std": self.std}}


def _dataset_fit(store: ObjectStore, data: str) -> str | None:
    """The fit (pad/crop) a dataset was preprocessed with, for checkpoints that predate 'fit'."""
    try:
        if data and os.path.isfile(os.path.join(data, "manifest.json")):
            manifest = json.loads(Path(data, "manifest.json").read_text())
        elif data and store.exists(join_key(data, "manifest.json")):
            manifest = json.loads(store.get_text(join_key(data, "manifest.json")))
        else:
            return None
    except (OSError, ValueError, CxrError):
        return None
    return manifest.get("parameters", {}).get("fit")


def load_run(store: ObjectStore, run: str, device: torch.device | str = "cpu") -> RunModel:
    """The run's best.pt with everything needed to score an image: model name ('arch'), class
    names, objective, image size, fit and normalisation. Older checkpoints without those keys
    fall back to the spec stored in the checkpoint / runs/<run>/spec.json."""
    from cxrjobs.data import transforms
    from cxrjobs.models import build_model, load_state_checked
    from cxrjobs.train import checkpoint

    key = join_key("runs", run, "checkpoints", "best.pt")
    ckpt = checkpoint.load(store, key)
    if ckpt is None:
        note = search_note(store, run)
        raise CxrError(note or f"run {run}: no best checkpoint at {store.url}/{key}; is the run finished "
                       "(`cxrjobs status RUN`) and the store the one it used (CXRJOBS_STORE)?")
    spec: dict = {}
    if ckpt.get("spec"):
        spec = json.loads(ckpt["spec"]) if isinstance(ckpt["spec"], str) else dict(ckpt["spec"])
    elif store.exists(join_key("runs", run, "spec.json")):
        spec = (json.loads(store.get_text(join_key("runs", run, "spec.json"))).get("train") or {})
    arch = ckpt.get("arch") or spec.get("model")
    objective = ckpt.get("objective") or spec.get("objective")
    names, size = ckpt.get("class_names"), ckpt.get("image_size")
    missing = [k for k, v in (("arch", arch), ("objective", objective), ("class_names", names),
                              ("image_size", size)) if not v]
    if missing:
        raise CxrError(f"{store.url}/{key} lacks {missing} and no spec records them; "
                       "it was not written by cxrjobs training")
    fit = ckpt.get("fit") or _dataset_fit(store, spec.get("data", "")) or "pad"
    norm = ckpt.get("normalization") or {"mean": transforms.MEAN, "std": transforms.STD}
    model = build_model(arch, len(names), int(size))
    load_state_checked(model, ckpt["model"], key)
    device = torch.device(device)
    model.to(device).eval()
    return RunModel(run, model, arch, list(names), objective, int(size), fit, float(norm["mean"]),
                    float(norm["std"]), spec, device)


# --- image files ---------------------------------------------------------------------------------

def expand_inputs(items: list[str]) -> list[str]:
    """Files as given; folders become their image files (recursively, sorted)."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            for dirpath, dirs, files in os.walk(item):
                dirs.sort()
                out += [os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTS)]
        else:
            out.append(item)
    return out


def _load_one(path: str, size: int, fit: str):
    from cxrjobs.data.decode import DecodeError, decode_bytes
    from cxrjobs.eval.ood import colourfulness

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return path, None, None, f"cannot read file: {e.strerror or e}"
    try:
        return path, decode_bytes(data, size, fit), colourfulness(data), None
    except DecodeError as e:
        return path, None, None, str(e)


def predict_files(rm: RunModel, paths: list[str], detector=None, batch_size: int = 64,
                  workers: int | None = None) -> list[dict]:
    """One entry per path, in order: label, probability (of that label), per-class probabilities
    and, with a detector, `ood` / `ood_score` (label `unknown` when flagged); a file that cannot be
    decoded gets {"file", "error"} and the others still answer. Files are decoded by a thread pool
    (Pillow releases the GIL) while the model scores the previous batch."""
    from cxrjobs.eval.metrics import is_binary

    workers = workers or min(8, len(os.sched_getaffinity(0)) + 2)
    results: list[dict] = []
    binary = is_binary(rm.objective, len(rm.class_names))
    load = lambda p: _load_one(p, rm.image_size, rm.fit)
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
        for b in range(len(chunks)):
            loaded = [f.result() for f in pending]
            # Decode the next batch while the model scores this one.
            pending = [pool.submit(load, p) for p in chunks[b + 1]] if b + 1 < len(chunks) else []
            ok = [r for r in loaded if r[3] is None]
            entries = iter([])
            if ok:
                images = np.stack([r[1] for r in ok])
                x = torch.from_numpy(images[:, None]).to(rm.device)
                with torch.no_grad():
                    logits, feats = forward(rm.model, rm.normalize(x), detector is not None)
                logits = logits.float().cpu()
                probs = (torch.sigmoid(logits) if rm.objective == "multilabel"
                         else torch.softmax(logits, dim=1)).numpy()
                flags = None
                if detector is not None:
                    flags = detector.score(feats.float().cpu().numpy(), images,
                                           np.array([r[2] for r in ok], dtype=np.float64))
                threshold = getattr(detector, "decision_threshold", None) if binary else None
                entries = iter([_entry(rm, r[0], probs[i], binary, threshold,
                                       None if flags is None else {k: v[i] for k, v in flags.items()})
                                for i, r in enumerate(ok)])
            for path, _, _, err in loaded:
                results.append(next(entries) if err is None else {"file": path, "error": err})
    return results


def _entry(rm: RunModel, path: str, probs: np.ndarray, binary: bool, threshold: float | None,
           ood: dict | None) -> dict:
    """A binary run decides at the threshold chosen on its validation split (stored with the OOD
    detector), else at 0.5; other runs take the most probable class."""
    names = rm.class_names
    cut = 0.5 if threshold is None else threshold
    if rm.objective == "multilabel" and not binary:
        order = np.argsort(-probs)
        label = names[int(order[0])]
        prob = float(probs[order[0]])
        per_class = {n: float(p) for n, p in zip(names, probs)}
    elif binary and rm.objective == "multilabel":
        p = float(probs[0])
        label, prob = (names[0], p) if p >= cut else (f"not {names[0]}", 1 - p)
        per_class = {names[0]: p}
    elif binary:
        p = float(probs[1])
        label, prob = (names[1], p) if p >= cut else (names[0], 1 - p)
        per_class = {n: float(q) for n, q in zip(names, probs)}
    else:
        k = int(np.argmax(probs))
        label, prob = names[k], float(probs[k])
        per_class = {n: float(p) for n, p in zip(names, probs)}
    out = {"file": path, "label": label, "probability": prob, "probabilities": per_class}
    if binary:
        out["threshold"] = cut
    if ood is not None:
        out.update(ood=bool(ood["ood"]), ood_score=float(ood["score"]), ood_reason=ood["reason"])
        if ood["ood"]:
            out["model_label"], out["label"] = label, "unknown"
    return out


def predict_paths(store: ObjectStore, run: str, inputs: list[str], batch_size: int = 64,
                  device: str | None = None, log=print, allow_unfinished: bool = False) -> dict:
    """`cxrjobs predict`: every image file under `inputs` scored by the run's best model, with
    the OOD check (fitted now when the run has no detector yet). A run still training is refused
    unless `allow_unfinished`: its best.pt can change, and its OOD detector is not fitted yet."""
    import time

    from cxrjobs.eval import ood

    paths = expand_inputs(inputs)
    if not paths:
        raise CxrError(f"no image files ({', '.join(IMAGE_EXTS)}) in {inputs}")
    note = None if allow_unfinished else training_note(store, run)
    if note:
        raise ConfigError(note)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rm = load_run(store, run, device)
    det = ood.load_for_run(store, run, rm=rm, log=log)
    t0 = time.perf_counter()
    results = predict_files(rm, paths, det, batch_size)
    seconds = time.perf_counter() - t0
    scored = [r for r in results if "error" not in r]
    return {"run": run, "model": rm.recipe(), "decision_threshold": det.decision_threshold,
            "ood_threshold": det.threshold, "images": len(results), "scored": len(scored),
            "errors": len(results) - len(scored), "ood_flagged": sum(r["ood"] for r in scored),
            "seconds": seconds, "results": results}
