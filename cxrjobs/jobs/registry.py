"""The one registry of job kinds: kind -> (payload field of JobSpec and its model, the function a
replica runs, whether replicas rendezvous). The entrypoint's dispatch, spec validation, the
backends and `cxrjobs submit` read it, so a new kind is one registration.

Replica functions are named as "module:function" strings and imported only inside the replica:
this module stays light (no torch), like the specs it points to.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable, Literal

from cxrjobs.errors import ConfigError


@dataclass(frozen=True)
class JobKind:
    name: str
    payload: str          # the JobSpec field that holds this kind's payload ("train", ...)
    runner: str           # "module:function" taking (job: JobSpec, store: ObjectStore)
    rendezvous: bool      # replicas form one torch.distributed group (else independent slices)
    help: str
    # How a cluster runs it: an Indexed Job of `replicas` pods, or a RayJob (one driver, whose
    # `replicas` are Ray worker pods; the local backend runs the driver as one process).
    workload: Literal["indexed-job", "ray-job"] = "indexed-job"

    def load_runner(self) -> Callable:
        module, _, func = self.runner.partition(":")
        return getattr(import_module(module), func)


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.name in KINDS:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown job kind {name!r}; known: {sorted(KINDS)}") from None


register(JobKind("nih-train", "train", "cxrjobs.jobs.runners:run_train", True,
                 "pre-train on NIH ChestX-ray14 (the paper's preset of the one training loop)"))
register(JobKind("train", "train", "cxrjobs.jobs.runners:run_train", True,
                 "train any model on any preprocessed dataset (baselines)"))
register(JobKind("transfer", "train", "cxrjobs.jobs.runners:run_train", True,
                 "fine-tune a pre-trained run on another dataset (paper methods 1 and 2)"))
register(JobKind("preprocess", "preprocess", "cxrjobs.jobs.runners:run_preprocess", False,
                 "decode and shard a raw dataset; replica i takes slice i"))
register(JobKind("evaluate", "evaluate", "cxrjobs.eval.job:run_evaluate", True,
                 "score a run on a dataset split or an external set (threshold from its validation split)"))
register(JobKind("tune", "tune", "cxrjobs.tune.job:run_tune", False,
                 "hyper-parameter search (Ray Tune PBT / ASHA / random) over a training job",
                 workload="ray-job"))
