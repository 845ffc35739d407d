"""The search itself: a Ray Tune Tuner over the trainable, with PBT, ASHA or random search.

The experiment (trial results, Tune checkpoints, experiment state) lives in the object store at
runs/<tune-id>/ray/: on S3 through a pyarrow S3 filesystem pointed at the store's endpoint, so
every node of a cluster shares it; a local store is a local directory. A second start of the
same run finds that experiment and resumes it with Tuner.restore: finished trials stay finished,
unfinished and errored ones continue from their last checkpoints.

While it runs, runs/<tune-id>/tune_status.json (trial counts, best so far) and, under PBT,
runs/<tune-id>/pbt_history.jsonl (each exploit: who cloned whom at which epoch, old and new
values) are kept up to date; `cxrjobs status` shows the former.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from ray import tune
from ray.train._internal.session import _FutureTrainingResult
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from cxrjobs.config import SECRET_ENV, Settings
from cxrjobs.specs.tune import TuneSpec
from cxrjobs.storage import ObjectStore, join_key, open_store
from cxrjobs.tune import space as spaces
from cxrjobs.tune.trainable import TrialTrainable

EXPERIMENT = "ray"          # runs/<tune-id>/ray/ holds Tune's experiment
STATUS_FILE = "tune_status.json"
HISTORY_FILE = "pbt_history.jsonl"
RESULTS_FILE = "results.jsonl"
# What results.jsonl keeps of each reported epoch (besides the metric).
ROW_KEYS = ("epoch", "val_loss", "lineage_best", "train_loss", "optimizer", "lr", "momentum",
            "weight_decay", "step_size", "gamma", "weights", "restored_epoch", "restored_digest",
            "time_total_s", "time_this_iter_s", "pid")


class _StoreFile:
    """A small JSON(L) file of the tune run in the object store, rewritten whole (atomic)."""

    def __init__(self, tune_id: str, name: str):
        self.key = join_key("runs", tune_id, name)
        self._store: ObjectStore | None = None

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store()
        return self._store

    def __getstate__(self):  # Tune pickles its scheduler and callbacks with the experiment
        return {**self.__dict__, "_store": None}


class HistoryLog(_StoreFile):
    def __init__(self, tune_id: str):
        super().__init__(tune_id, HISTORY_FILE)
        self.entries: list[dict] | None = None

    def load(self) -> list[dict]:
        if self.entries is None:  # a resumed experiment keeps the exploits before the restart
            self.entries = self.store.get_jsonl(self.key)
        return self.entries

    def append(self, entry: dict) -> None:
        self.load().append(entry)
        self.store.put_text(self.key, "".join(json.dumps(e) + "\n" for e in self.entries))


class _NoProgressFileYet(logging.Filter):
    """When a trial restarts from a checkpoint (PBT exploit, a paused trial's turn), Tune's CSV and
    JSON loggers first copy the trial's progress file back from storage, and warn when there is
    none: the case of a trial cloned or paused before its own first result was written. Tune
    then starts the file afresh; the search's record is results.jsonl. The warning is dropped
    rather than alarm the user on every search."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Remote file not found")


NO_PROGRESS_FILE_YET = _NoProgressFileYet()


class RecordingPBT(PopulationBasedTraining):
    """PBT that records every exploit with the donor's epoch and weights digest, so the
    perturbation history says exactly which checkpoint a trial continued from."""

    def __init__(self, history: HistoryLog, last_epoch: int, population_fits: bool, **kwargs):
        super().__init__(**kwargs)
        self.history, self.last_epoch, self.population_fits = history, last_epoch, population_fits
        # trial id -> (trial, donor): exploits that wait for the donor's checkpoint of the epoch
        # the trial has reached (see _exploit)
        self.waiting: dict[str, tuple[Trial, Trial]] = {}
        # trial id -> the number of the exploit that last cloned into it (see choose_trial_to_run)
        self.cloned: dict[str, int] = {}

    def on_trial_result(self, tune_controller, trial, result):
        # A trial at its last epoch is done: cloning into it (or pausing it) would only cost time.
        if result.get("epoch", 0) >= self.last_epoch:
            self._donor_reported(tune_controller, trial, usable=False)
            return self.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        self._donor_reported(tune_controller, trial, usable=True)
        if decision == self.PAUSE and not self._synch and self.population_fits:
            # Asynchronous PBT pauses a trial whenever another one is paused or pending, so that
            # a population larger than the free slots takes turns. When every trial has a slot,
            # the other one is only paused by its exploit and resumes at once on its own slot:
            # pausing this one as well made the two take turns instead of training side by side.
            return self.CONTINUE
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        self._donor_reported(tune_controller, trial, usable=False)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        self._donor_reported(tune_controller, trial, usable=False)
        super().on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        if self._synch or (self.population_fits and not self.waiting):
            return super().choose_trial_to_run(tune_controller)
        # As PBT's: the trial that has trained least goes first; one waiting for its donor stays
        # paused until the donor has reported. When the trials take turns (more trials than
        # slots), among trials at the same epoch one that has just cloned another's checkpoint
        # goes after the others: an exploit sets a trial back to its donor's epoch, and PBT's
        # order picked it again before the donor, paused at that epoch, which never trained on;
        # the trial cloned the same checkpoint again, for ever.
        candidates = [t for t in tune_controller.get_trials() if t.status in (Trial.PENDING, Trial.PAUSED)
                      and t.trial_id not in self.waiting]
        turns = not self.population_fits
        return min(candidates, key=lambda t: (self._trial_state[t].last_train_time,
                                              self.cloned.get(t.trial_id, 0) if turns else 0), default=None)

    def _donor_reported(self, tune_controller, donor, usable: bool) -> None:
        """The donor of waiting exploits has reported (or ended): each waiting trial now clones
        the donor's fresh checkpoint, or, where the donor is no longer a top trial (or ended),
        goes on from its own last checkpoint."""
        for tid, (trial, d) in list(self.waiting.items()):
            if d is not donor:
                continue
            del self.waiting[tid]
            state = self._trial_state[donor]
            ckpt = state.last_checkpoint if usable else None
            # Only a checkpoint saved at this report is the donor's fresh one: PBT saves one for a
            # top trial. A donor that fell to the bottom saved none; its last checkpoint is of an
            # earlier epoch than the waiting trial's, which must not go back to it.
            fresh = isinstance(ckpt, _FutureTrainingResult)
            if fresh:
                done = ckpt.resolve()
                state.last_checkpoint = ckpt = done.checkpoint if done else None
                if done:
                    state.last_result = done.metrics
            wanted = (self._trial_state[trial].last_result or {}).get("epoch", 0)
            if (fresh and ckpt is not None and trial.status == Trial.PAUSED
                    and (state.last_result or {}).get("epoch", 0) >= wanted):
                self._synch, synch = True, self._synch  # Ray's _exploit takes a paused trial only in synch mode
                try:
                    self._exploit(tune_controller, trial, donor)
                finally:
                    self._synch = synch

    def on_trial_add(self, tune_controller, trial):
        self._controller = tune_controller
        super().on_trial_add(tune_controller, trial)

    def all_trials_finished(self) -> bool:
        controller = getattr(self, "_controller", None)
        return controller is None or all(t.is_finished() for t in controller.get_trials())

    def __getstate__(self):  # Tune pickles its scheduler with the experiment, not the controller
        return {**{k: v for k, v in self.__dict__.items() if k != "_controller"}, "waiting": {}}

    def __setstate__(self, state):  # a search saved before `cloned` existed resumes too
        self.__dict__.update({"cloned": {}, **state})

    def _exploit(self, tune_controller, trial, trial_to_clone):
        donor = self._trial_state[trial_to_clone].last_result or {}
        mine = self._trial_state[trial].last_result or {}
        if (not self._synch and self.population_fits and trial.status == Trial.RUNNING
                and trial_to_clone.status == Trial.RUNNING and donor.get("epoch", 0) < mine.get("epoch", 0)):
            # Asynchronous PBT would clone the donor's checkpoint of an earlier epoch, and this
            # trial would train that epoch again. The donor is training the missing epoch right
            # now: the trial waits, paused, and clones the donor's checkpoint of its own epoch
            # once the donor reports it (_donor_reported).
            self.waiting[trial.trial_id] = (trial, trial_to_clone)
            tune_controller.pause_trial(trial, should_checkpoint=False)
            return
        # PBT's state holds the result being processed (the trial's own last_result lags one).
        before, old = mine, dict(trial.config)
        super()._exploit(tune_controller, trial, trial_to_clone)
        self.cloned[trial.trial_id] = self._num_perturbations
        keys = list(self._hyperparam_mutations)
        self.history.append({
            "time": time.time(), "trial": trial.trial_id, "trial_epoch": before.get("epoch"),
            "trial_score": before.get(self._metric), "donor": trial_to_clone.trial_id,
            "donor_epoch": donor.get("epoch"), "donor_score": donor.get(self._metric),
            "donor_weights": donor.get("weights"),
            "old_config": {k: old.get(k) for k in keys},
            "donor_config": {k: trial_to_clone.config.get(k) for k in keys},
            "new_config": {k: trial.config.get(k) for k in keys}})


class PBTSearch(BasicVariantGenerator):
    """The trials of a PBT search, all created at the start. Tune keeps the process of a stopped
    trial for reuse only while its search can still create trials (TuneController's
    _maybe_cache_trial_actor, Ray 2.x): with all trials created, every trial paused by an
    exploit started a new process (imports, dataset, model: seconds) when it went on. This search
    says it is finished only once every trial is, so Ray keeps the process of a paused trial and
    the trial goes on in it (reset_config + load_checkpoint)."""

    def __init__(self, scheduler: RecordingPBT, **kwargs):
        super().__init__(**kwargs)
        self.scheduler = scheduler

    def is_finished(self) -> bool:
        return super().is_finished() and self.scheduler.all_trials_finished()

    def get_state(self):  # the search's own state, saved with each experiment snapshot
        state = super().get_state()
        if state:
            state.pop("scheduler", None)
        return state


class StatusCallback(tune.Callback):
    """Every reported epoch of every trial (results.jsonl: the search's own record, complete
    across pauses, restores and resumed experiments), trial counts and the best result so far
    (tune_status.json, for `cxrjobs status`), and one progress line per epoch in the job's log."""

    def __init__(self, tune_id: str, spec: TuneSpec, log: Callable[[str], None] = print):
        self.status = _StoreFile(tune_id, STATUS_FILE)
        self.results = _StoreFile(tune_id, RESULTS_FILE)
        self.metric, self.mode, self.total, self.epochs = spec.metric, spec.mode, spec.trials, spec.epochs_per_trial
        self.log = log
        self.best: dict | None = None
        self.rows: list[dict] | None = None
        self.started = time.time()

    def setup(self, **info):
        # A resumed experiment keeps what was recorded before the interruption.
        if self.rows is None:
            self.rows = self.results.store.get_jsonl(self.results.key)
        if self.best is None and self.status.store.exists(self.status.key):
            self.best = json.loads(self.status.store.get_text(self.status.key)).get("best")

    def _better(self, v) -> bool:
        if not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return self.best is None or (v < self.best["value"] if self.mode == "min" else v > self.best["value"])

    def _write(self, trials, final: bool = False) -> None:
        counts: dict[str, int] = {}
        for t in trials:
            status = t.status.lower()
            # Tune marks every trial TERMINATED when the search is stopped (a cancel, a signal):
            # one that did not reach its last epoch was stopped, not finished.
            if status == "terminated" and ((t.last_result or {}).get("epoch") or 0) < self.epochs:
                status = "stopped before its last epoch"
            counts[status] = counts.get(status, 0) + 1
        doc = {"trials": {"total": self.total, **counts}, "metric": self.metric, "mode": self.mode,
               "best": self.best, "epochs_reported": len(self.rows or []),
               "elapsed_s": time.time() - self.started, "updated": time.time(),
               "finished": final and not counts.get("stopped before its last epoch")}
        self.status.store.put_text(self.status.key, json.dumps(doc, indent=1, default=str))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.rows is None:
            self.setup()
        row = {"trial": trial.trial_id, "time": time.time(),
               **{k: result.get(k) for k in ROW_KEYS if k in result}, self.metric: result.get(self.metric),
               "config": {k: trial.config.get(k) for k in sorted(trial.config)}}
        self.rows.append(row)
        self._write_rows()
        v = result.get(self.metric)
        if self._better(v):
            self.best = {"trial": trial.trial_id, "value": v, "epoch": result.get("epoch"),
                         "split": "val", "config": row["config"]}
        best = f"{self.best['value']:.4f} ({self.best['trial']})" if self.best else "-"
        self.log(f"trial {trial.trial_id} epoch {result.get('epoch')} {self.metric} {v:.4f}; best so far {best}")
        self._write(trials)

    def _write_rows(self) -> None:
        self.results.store.put_text(self.results.key, "".join(json.dumps(r, default=str) + "\n" for r in self.rows))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # The epoch's checkpoint, saved right after its result: which directory holds it.
        # (PBT also saves its top trials at a perturbation: a second copy of the same epoch.)
        mine = [r for r in self.rows or [] if r["trial"] == trial.trial_id]
        if mine and "checkpoint_dir_name" not in mine[-1]:
            mine[-1]["checkpoint_dir_name"] = os.path.basename(str(checkpoint.path).rstrip("/"))
            self._write_rows()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._write(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"trial {trial.trial_id} failed for good: {trial.error_file or ''}")
        self._write(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.log(f"trial {trial.trial_id} failed; retrying from its last checkpoint")
        self._write(trials)

    def on_experiment_end(self, trials, **info):
        self._write(trials, final=True)


def storage_for(settings: Settings, tune_id: str) -> tuple[str, Any]:
    """(storage_path, pyarrow filesystem or None) of the run's Tune experiment in the store."""
    if not settings.is_s3:
        from pathlib import Path
        return str(Path(settings.store).expanduser().resolve() / "runs" / tune_id), None
    import pyarrow.fs

    bucket, _, prefix = settings.store[len("s3://"):].partition("/")
    fs = pyarrow.fs.S3FileSystem(
        access_key=os.environ.get(SECRET_ENV[0]), secret_key=os.environ.get(SECRET_ENV[1]),
        endpoint_override=settings.s3_endpoint, scheme="https" if settings.s3_secure else "http",
        region="us-east-1")
    return "/".join(p for p in (bucket, prefix.strip("/"), "runs", tune_id) if p), fs


def make_scheduler(spec: TuneSpec, history: HistoryLog, concurrent: int):
    if spec.algo == "pbt":
        space = spec.space or {}
        return RecordingPBT(
            history, spec.epochs_per_trial, spec.trials <= concurrent, time_attr="epoch",
            perturbation_interval=spec.perturbation_interval,
            hyperparam_mutations=spaces.mutations(space), quantile_fraction=spec.quantile_fraction,
            resample_probability=spec.resample_probability, synch=spec.synch,
            custom_explore_fn=lambda config: spaces.clamp(space, config))
    if spec.algo == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=spec.epochs_per_trial, grace_period=1,
                             reduction_factor=2)
    return FIFOScheduler()


@dataclass
class Plan:
    cpus: int
    concurrent: int
    threads: int


def plan(spec: TuneSpec, cpus: int) -> Plan:
    """Trials at once and torch threads per trial: cores / concurrent trials, no oversubscription."""
    concurrent = max(1, min(spec.trials, spec.max_concurrent or cpus))
    return Plan(cpus, concurrent, max(1, cpus // concurrent))


def run_search(spec: TuneSpec, tune_id: str, settings: Settings, *, cpus: int,
               log: Callable[[str], None] = print, hook: Callable | None = None):
    """Run (or resume) the search; returns Tune's ResultGrid. Ray must be initialised."""
    import random

    p = plan(spec, cpus)
    trainable = tune.with_resources(
        tune.with_parameters(TrialTrainable, tune_json=spec.model_dump_json(), threads=p.threads, hook=hook),
        {"cpu": p.cpus / p.concurrent})  # exactly `concurrent` trials fit
    path, fs = storage_for(settings, tune_id)
    experiment = f"{path}/{EXPERIMENT}"
    # Tune's default loggers include TensorBoard's, whose import alone took 2.3 s of every
    # search's start here; the search's own record is results.jsonl and its plots. Tune's JSON and
    # CSV files per trial stay: its ResultGrid reads them.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    logging.getLogger("ray.tune.logger.logger").addFilter(NO_PROGRESS_FILE_YET)  # once per logger
    # Every checkpoint forces an experiment snapshot (num_to_keep is set) and Tune warns each time
    # that happens within 5 s: under PBT that is every epoch, by design.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log(f"resuming the search from {experiment}: finished trials are kept, the others "
            "continue from their last checkpoints")
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    else:
        random.seed(spec.seed)  # PBT's explore draws from `random`
        history = HistoryLog(tune_id)
        log(f"searching {spec.trials} trials x {spec.epochs_per_trial} epochs ({spec.algo}, "
            f"{spec.metric} {spec.mode}) over {json.dumps(spec.space)}; {p.concurrent} at once "
            f"x {p.threads} thread(s) on {p.cpus} CPUs")
        scheduler = make_scheduler(spec, history, p.concurrent)
        search = (PBTSearch(scheduler, random_state=spec.seed) if spec.algo == "pbt"
                  # The other algorithms start trials only as slots free up.
                  else BasicVariantGenerator(random_state=spec.seed, max_concurrent=p.concurrent))
        tuner = tune.Tuner(
            trainable, param_space=spaces.param_space(spec.space or {}),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.trials,
                # PBT's population is every trial at once: Ray's CPUs (threads per trial) bound
                # how many run, and PBT pauses one at each perturbation so a waiting one can run.
                scheduler=scheduler, search_alg=search,
                # An exploited or paused trial goes on in a warm process (reset_config + restore).
                reuse_actors=True),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=path, storage_filesystem=fs, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                # PBT clones a donor's checkpoint from its last perturbation, and a top trial
                # saves twice at one (its epoch's checkpoint and PBT's): keep enough of them.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2 * spec.perturbation_interval + 3),
                callbacks=[StatusCallback(tune_id, spec, log), JsonLoggerCallback(), CSVLoggerCallback()]))
    return tuner.fit()
