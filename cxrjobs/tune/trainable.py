"""One Tune trial = one run of the one training loop (cxrjobs.train.loop.Trainer), one epoch per
Tune step.

The trial's Trainer writes its run into a scratch local store in the trial's directory; each
epoch's checkpoint files (latest.pt, best.pt, metrics.jsonl) become a Tune checkpoint. On a
restore (PBT exploit, a retried failure, a resumed experiment) the Tune checkpoint's files are
put back into the scratch run and the Trainer resumes from them: the donor's weights, optimizer
state, epoch and history, with the trial's (explored) hyper-parameters applied on top.

A class trainable rather than a function: when PBT clones a donor into a trial, Tune keeps the
trial's process (reuse_actors), calls reset_config with the explored values and load_checkpoint
with the donor's files, and the next step trains on. A function trainable's thread is half-way
through its next epoch when the trial is paused, so Ray could not reuse its process: every
exploit cost a new process (imports, dataset, model) and a thrown-away part of an epoch.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

from ray import tune

# The files of a run that make up one Tune checkpoint (paths relative to runs/<id>/).
CHECKPOINT_FILES = ("checkpoints/latest.pt", "checkpoints/best.pt", "metrics.jsonl")
TRIAL_RUN = "trial"


def copy_run_files(src: Path, dst: Path) -> None:
    """The CHECKPOINT_FILES that `src` (a run directory or a Tune checkpoint) holds, into `dst`."""
    for rel in CHECKPOINT_FILES:
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)


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


class TrialTrainable(tune.Trainable):
    """The Tune trainable. `hook(trainable)` runs at the start of each step, before the epoch
    trains (tests use it to inject a failure)."""

    def setup(self, config: dict, tune_json: str, threads: int, hook: Callable | None = None):
        from cxrjobs.specs.tune import TuneSpec
        from cxrjobs.storage import open_store
        from cxrjobs.train.loop import resolve_dataset

        self.spec = TuneSpec.model_validate_json(tune_json)
        # Every node materialises the dataset from the object store into its own cache once.
        self.data = resolve_dataset(self.spec.train.data, open_store())
        self.threads, self.hook = threads, hook
        self.reset_config(config)

    def reset_config(self, new_config: dict) -> bool:
        """A new config for this process (PBT: the explored values, followed by load_checkpoint
        with the donor's files): a fresh scratch run; the Trainer is built at the next step."""
        self.config = new_config
        self.tspec = self.spec.trial_train_spec(new_config, data=str(self.data), threads=self.threads,
                                                evaluate_test=False)
        # What its checkpoints record: the store's dataset, not this node's cache of it, so the
        # best trial's files export as a run by plain copying.
        self.recorded_spec = self.spec.trial_train_spec(new_config)
        self.scratch = Path(self.logdir) / "run"
        shutil.rmtree(self.scratch, ignore_errors=True)  # a previous config's files are never resumed
        self.run_dir = self.scratch / "runs" / TRIAL_RUN
        self.trainer = None
        self.restored = False
        return True

    def _start_trainer(self):
        import torch

        from cxrjobs.storage import LocalStore
        from cxrjobs.train.distributed import DistContext
        from cxrjobs.train.loop import Run, Trainer

        log_file = Path(self.logdir) / "trainer.log"

        def log(msg: str) -> None:
            with open(log_file, "a") as f:
                print(msg, file=f)

        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.trainer = Trainer(self.tspec, Run(LocalStore(self.scratch), TRIAL_RUN),
                               DistContext(0, 1, device, None), log=log,
                               recorded_spec=self.recorded_spec).begin()

    def step(self) -> dict:
        from cxrjobs.train.checkpoint import weights_digest

        if self.trainer is None:
            self._start_trainer()
        t = self.trainer
        restored = {}
        if self.restored:  # what this epoch starts from, read from the resumed Trainer
            restored = {"restored_epoch": t.epoch, "restored_digest": weights_digest(t.model)}
            self.restored = False
        if self.hook is not None:
            self.hook(self)
        record = t.train_epoch() if t.epoch < self.tspec.epochs else t.history[-1]
        spec, g = self.spec, t.opt.param_groups[0]
        metrics = {
            "epoch": record["epoch"], "val_loss": float(record["val"]["loss"]),
            spec.metric: metric_value(record["val"], spec.metric),
            "lineage_best": lineage_best(t.history, spec.metric, spec.mode),
            "train_loss": record["train"]["loss"],
            # What the optimizer and scheduler really used (PBT explore must reach them).
            "optimizer": self.tspec.optimizer, "lr": record["lr"], "momentum": g.get("momentum"),
            "weight_decay": g["weight_decay"],
            "step_size": t.sched.step_size if t.sched else None,
            "gamma": t.sched.gamma if t.sched else None,
            "weights": weights_digest(t.model),
            # Every epoch is a Tune checkpoint: a retry or an exploit starts from the last one.
            "should_checkpoint": True, "done": t.epoch >= self.tspec.epochs,
            **restored,
        }
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        # Ray names checkpoint directories checkpoint_<n> from a counter that a restored trial
        # takes up again from an older value: the new checkpoint would overwrite a directory the
        # trial's checkpoint manager still lists, and num_to_keep would then delete it, i.e. the
        # newest checkpoint. A millisecond clock gives each save its own directory (the storage
        # context adds one to the index after this returns).
        storage = self._storage
        if storage is not None:
            storage.current_checkpoint_index = max(storage.current_checkpoint_index, time.time_ns() // 1_000_000 - 1)
        copy_run_files(self.run_dir, Path(checkpoint_dir))

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        copy_run_files(Path(checkpoint_dir), self.run_dir)
        self.trainer = None  # the next step resumes a Trainer from these files
        self.restored = True

