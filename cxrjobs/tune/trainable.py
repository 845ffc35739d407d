"""One Tune trial = one run of the one training loop (cxrjobs.train.loop.Trainer).

The trial's Trainer writes its run into a scratch local store in the trial's directory. After
each epoch (the Trainer's on_epoch_end callback, called once latest.pt is written) the run's
checkpoint files become a Tune checkpoint, reported with the epoch's metrics. On a restore
(PBT exploit, a retried failure, a resumed experiment) the Tune checkpoint's files are put back
into the scratch run before the Trainer starts: it resumes the donor's weights, optimizer state,
epoch and history, and then re-applies the trial's (explored) hyper-parameters.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

# The files of a run that make up one Tune checkpoint (paths relative to runs/<id>/).
CHECKPOINT_FILES = ("checkpoints/latest.pt", "checkpoints/best.pt", "metrics.jsonl")
TRIAL_RUN = "trial"


def state_digest(state: dict) -> str:
    """sha256 of a model state dict (the same bytes as checkpoint.weights_digest of the model)."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def metric_value(val: dict, metric: str) -> float:
    """val_loss reads val["loss"]; val_X reads val[X]["value"] (nan when undefined)."""
    if metric == "val_loss":
        return float(val["loss"])
    entry = val.get(metric[len("val_"):]) or {}
    v = entry.get("value") if isinstance(entry, dict) else None
    return float("nan") if v is None else float(v)


def lineage_best(history: list[dict], metric: str, mode: str) -> float:
    """Best value of the metric over the run's history: the epochs behind its weights (a cloned
    trial inherits its donor's), which is what its best.pt holds."""
    vals = [v for v in (metric_value(h["val"], metric) for h in history) if not math.isnan(v)]
    if not vals:
        return float("nan")
    return min(vals) if mode == "min" else max(vals)


def _restore(checkpoint_dir: Path, run_dir: Path) -> dict:
    """Put a Tune checkpoint's files into the trial's run; returns what was restored."""
    import torch

    for rel in CHECKPOINT_FILES:
        src = checkpoint_dir / rel
        if src.is_file():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, run_dir / rel)
    ckpt = torch.load(run_dir / "checkpoints/latest.pt", map_location="cpu", weights_only=True)
    return {"restored_epoch": int(ckpt["epoch"]), "restored_digest": state_digest(ckpt["model"])}


def _fresh_checkpoint_index() -> None:
    """Ray names a trial's checkpoint directories checkpoint_<n> from a counter that a restarted
    trial (PBT exploit, retry) took up again from an older value: the new checkpoint overwrote a
    directory its checkpoint manager still listed, and `num_to_keep` then deleted that older
    entry, i.e. the newest checkpoint. A millisecond clock gives each report its own directory.
    (Ray's session is private API: where it is missing, Ray's own numbering stays.)"""
    try:
        from ray.train._internal.session import get_session

        storage = get_session().storage
        # report() adds one before it persists the checkpoint.
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, time.time_ns() // 1_000_000 - 1)
    except (ImportError, AttributeError):
        pass


def train_trial(config: dict, tune_json: str, threads: int, hook: Callable | None = None) -> None:
    """The Tune function trainable. `hook(trainer, record)` runs after each epoch's report
    (tests use it to inject a failure)."""
    import torch
    from ray import tune

    from cxrjobs.specs.tune import TuneSpec
    from cxrjobs.storage import LocalStore, open_store
    from cxrjobs.train.distributed import DistContext
    from cxrjobs.train.loop import Run, Trainer, resolve_dataset

    spec = TuneSpec.model_validate_json(tune_json)
    # Every node materialises the dataset from the object store into its own cache once.
    data = resolve_dataset(spec.train.data, open_store())
    trial_dir = Path(tune.get_context().get_trial_dir())
    scratch = trial_dir / "run"
    shutil.rmtree(scratch, ignore_errors=True)  # a previous attempt's files are never resumed
    run = Run(LocalStore(scratch), TRIAL_RUN)
    run_dir = scratch / "runs" / TRIAL_RUN
    restored: dict = {}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = _restore(Path(d), run_dir)
    tspec = spec.trial_train_spec(config, data=str(data), threads=threads, evaluate_test=False)
    log_file = open(trial_dir / "trainer.log", "a", buffering=1)

    def on_epoch_end(trainer, record) -> None:
        g = trainer.opt.param_groups[0]
        metrics = {
            "epoch": record["epoch"], "val_loss": float(record["val"]["loss"]),
            spec.metric: metric_value(record["val"], spec.metric),
            "lineage_best": lineage_best(trainer.history, spec.metric, spec.mode),
            "train_loss": record["train"]["loss"],
            # What the optimizer and scheduler really used (PBT explore must reach them).
            "optimizer": tspec.optimizer, "lr": record["lr"], "momentum": g.get("momentum"),
            "weight_decay": g["weight_decay"],
            "step_size": trainer.sched.step_size if trainer.sched else None,
            "gamma": trainer.sched.gamma if trainer.sched else None,
            "weights": state_digest(trainer.model.state_dict()),
            **restored,
        }
        restored.clear()
        with tempfile.TemporaryDirectory(dir=trial_dir, prefix="ckpt-") as d:
            for rel in CHECKPOINT_FILES:
                src = run_dir / rel
                if src.is_file():
                    (Path(d) / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, Path(d) / rel)
            _fresh_checkpoint_index()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if hook is not None:
            hook(trainer, record)

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        Trainer(tspec, run, DistContext(0, 1, device, None),
                log=lambda m: print(m, file=log_file), on_epoch_end=on_epoch_end).fit()
    finally:
        log_file.close()
