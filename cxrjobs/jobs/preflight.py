"""Checks made at submit, before any replica starts: what is wrong in the configuration fails
here, naming the field, instead of inside every replica after the back-off (issue 6, item 12).

Light: reads the dataset's manifest.json through the store (or a local folder), nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.jobs.spec import JobSpec, best_run_id
from cxrjobs.specs.train import TrainSpec, available_monitors
from cxrjobs.storage import ObjectStore, join_key
from cxrjobs.storage.runs import best_run_taken, locate_weights, search_note, training_note


def _manifest(data: str, store: ObjectStore, field: str) -> dict:
    """The manifest of a dataset given as a local folder or a store prefix."""
    if os.path.isdir(data):
        path = Path(data) / "manifest.json"
        if not path.is_file():
            raise ConfigError(f"{field}: {data} is a folder without manifest.json, not a preprocessed "
                              "dataset; preprocess it first (`cxrjobs data preprocess`)")
        text, where = path.read_text(), str(path)
    elif os.path.exists(data):  # else taken for a store key, and named without its leading '/'
        raise ConfigError(f"{field}: {data} is a file, not a dataset folder; give the folder a "
                          "preprocessing run wrote (with manifest.json)")
    else:
        try:
            key = join_key(data, "manifest.json")
        except CxrError as e:
            raise ConfigError(f"{field}: {e}") from None
        if not store.exists(key):
            raise ConfigError(f"{field}: dataset {data!r} not found: neither a local folder nor a dataset "
                              f"in store {store.url} (expected {key}); preprocess it first or fix --data")
        text, where = store.get_text(key), f"{store.url}/{key}"
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{field}: {where} is not valid JSON ({e}); preprocess the dataset again") from None


def check_train(spec: TrainSpec, store: ObjectStore, field: str = "train") -> None:
    # The weights to start from: a finished run, a store object or a local file, found as the
    # replica will look for them (it would find out only after it started).
    if spec.init_from:
        try:
            locate_weights(spec.init_from, store)
        except CxrError as e:
            raise ConfigError(f"{field}.init_from: {e}") from None
    if spec.pretrained and spec.pretrained != "imagenet":  # a file, store key or s3:// URL
        try:
            locate_weights(spec.pretrained, store)
        except CxrError as e:
            raise ConfigError(f"{field}.pretrained: {e}") from None
    manifest = _manifest(spec.data, store, f"{field}.data")
    for split in ("train", "val"):  # the replica needs both (val picks the best epoch)
        if (manifest.get("splits") or {}).get(split) == 0:
            raise ConfigError(f"{field}.data: dataset {spec.data} has no {split} images; preprocess it with "
                              "more images or other --fractions (e.g. 0.7,0.1,0.2)")
    names = manifest.get("findings" if spec.objective == "multilabel" else "labels")
    if names:
        ok = available_monitors(spec.objective, len(names))
        if spec.monitor not in ok:
            raise ConfigError(f"{field}.monitor: {spec.monitor} is not reported for a {spec.objective} task "
                              f"with {len(names)} classes ({spec.data}); choose one of {ok}")
    size = manifest.get("image_size")
    if spec.image_size is not None and size is not None and int(size) != spec.image_size:
        raise ConfigError(f"{field}.image_size: {spec.image_size}, but dataset {spec.data} was "
                          f"preprocessed at {size}; drop --image-size or preprocess again at {spec.image_size}")


def _same_dataset(a: str, b: str) -> bool:
    if os.path.isdir(a) or os.path.isdir(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return a.strip("/") == b.strip("/")


def _check_eval_target(ev, store: ObjectStore) -> None:
    """Scores that would mislead: a split that holds the run's own training images, or an
    evaluation that would replace another one (other data or split) under the same name."""
    spec_key = join_key("runs", ev.run, "spec.json")
    trained_on = None
    if store.exists(spec_key):
        spec = json.loads(store.get_text(spec_key))
        trained_on = (spec.get("train") or {}).get("data")
    if ev.split == "all" and trained_on and _same_dataset(ev.data, trained_on):
        raise ConfigError(f"evaluate.split: all of {ev.data} includes the images run {ev.run} trained and "
                          "chose its epoch on; score its held-out patients with --split test, or give "
                          "another dataset (an external test set) for --split all")
    prior_key = join_key("runs", ev.run, "eval", ev.result_name, "results.json")
    if store.exists(prior_key):
        prior = json.loads(store.get_text(prior_key))
        if not _same_dataset(str(prior.get("dataset")), ev.data) or prior.get("split") != ev.split:
            raise ConfigError(
                f"evaluate.name: runs/{ev.run}/eval/{ev.result_name} holds the scores on {prior.get('dataset')} "
                f"(split {prior.get('split')}); these would replace them with {ev.data} (split {ev.split}). "
                "Pick another --as, or delete that folder from the store to replace it")


def check_job(job: JobSpec, store: ObjectStore) -> None:
    """Raise ConfigError (naming the field) for what can be known wrong before a replica runs."""
    if job.train is not None:
        check_train(job.train, store, "train")
    if getattr(job, "tune", None) is not None:  # a search holds the training spec of its trials
        check_train(job.tune.train, store, "tune.train")
        taken = best_run_taken(store, job.name, best_run_id(job.name))
        if taken:
            raise ConfigError(f"name: {taken}")
    if getattr(job, "evaluate", None) is not None:
        ev = job.evaluate
        _manifest(ev.data, store, "evaluate.data")
        best = join_key("runs", ev.run, "checkpoints", "best.pt")
        if not store.exists(best):
            note = search_note(store, ev.run)
            raise ConfigError(f"evaluate.run: {note}" if note else
                              f"evaluate.run: no trained run {ev.run!r} in store {store.url} (expected "
                              f"{best}); is it finished (`cxrjobs status {ev.run}`)?")
        note = None if ev.allow_unfinished else training_note(store, ev.run)
        if note:
            raise ConfigError(f"evaluate.run: {note}")
        _check_eval_target(ev, store)
    if job.preprocess is not None:
        try:
            join_key(job.preprocess.output)
        except CxrError as e:
            raise ConfigError(f"preprocess.output: {e}; use a store prefix like datasets/NAME") from None
