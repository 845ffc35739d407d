"""A job: a kind, its payload spec, and how many replicas run it with what failure policy.

The same JobSpec is rendered by every backend (local processes, Kubernetes Indexed Jobs) and
stored as runs/<name>/spec.json, which each replica reads at start. Light: no torch or pandas.
"""

from __future__ import annotations

import re
import secrets
import time

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrjobs.errors import CxrError
from cxrjobs.jobs.registry import KINDS
from cxrjobs.specs.eval import EvalSpec
from cxrjobs.specs.preprocess import PreprocessSpec
from cxrjobs.specs.train import TrainSpec
from cxrjobs.specs.tune import TuneSpec

NAME_MAX = 52
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")  # a valid Kubernetes Job name
NAME_RULE = f"lower-case letters, digits and '-', at most {NAME_MAX} characters, starting and ending alphanumeric"
# A search (a kind run as a KubeRay RayJob, e.g. tune) has a shorter name, on every backend:
# KubeRay's ValidateRayJobMetadata refuses a RayJob name over 47 characters (its RayCluster is
# the name plus a 6-character suffix, within MaxRayClusterNameLength 53), and a search's best
# trial is exported as the run NAME-best, which must itself be a valid run name (52).
KUBERAY_NAME_MAX = 53 - 6
BEST_SUFFIX = "-best"
SEARCH_NAME_MAX = min(KUBERAY_NAME_MAX, NAME_MAX - len(BEST_SUFFIX))  # 47


def best_run_id(search: str) -> str:
    """The run a search's best trial is exported as. A search's name is checked at submit (at
    most SEARCH_NAME_MAX); the cut keeps an older search's longer name exportable."""
    return check_run_name(f"{search[:SEARCH_NAME_MAX].rstrip('-')}{BEST_SUFFIX}")


def check_run_name(name: str) -> str:
    """Every command that takes a run name goes through this (it becomes a path and an object name)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name {name!r}: use {NAME_RULE} (it becomes a Kubernetes object name)")
    return name


def new_run_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class PreprocessJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: PreprocessSpec
    output: str = Field(description="dataset prefix in the store, e.g. datasets/nih-224")
    workers: int = Field(1, ge=1, description="processes per replica")
    overwrite: bool = Field(False, description="replace an output made with other options (else refused)")

    @field_validator("output")
    @classmethod
    def _output_key(cls, v: str) -> str:
        from cxrjobs.storage.base import check_key  # light: no store client is imported

        if v.startswith("store://"):  # what `data preprocess --out` takes: the same store
            v = v[len("store://"):]
        elif "://" in v:
            raise ValueError(f"{v!r}: the output is a prefix in the job's store (CXRJOBS_STORE), "
                             "not a URL; e.g. datasets/nih-224 or store://datasets/nih-224")
        try:
            return check_key(v)  # empty would be the store's root; '..' would leave it
        except CxrError as e:
            raise ValueError(f"{e}; e.g. datasets/nih-224") from None


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: str
    name: str
    replicas: int = Field(1, ge=1, le=1024)
    backoff_limit: int = Field(3, ge=0, description="group restarts after a replica fails")
    rendezvous_timeout: float = Field(300.0, gt=0, description="seconds to wait for all replicas")
    # Payloads: the registry says which one a kind needs.
    train: TrainSpec | None = None
    preprocess: PreprocessJob | None = None
    evaluate: EvalSpec | None = None
    tune: TuneSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str, info) -> str:
        # A field validator (kind, declared first, is in info.data), so that the error names the
        # field: `name: ...`.
        check_run_name(v)
        kind = KINDS.get(info.data.get("kind"))
        if kind is not None and (kind.name == "tune" or kind.workload == "ray-job") and len(v) > SEARCH_NAME_MAX:
            raise ValueError(
                f"name {v!r} has {len(v)} characters; a search's name has at most {SEARCH_NAME_MAX}: KubeRay "
                f"takes RayJob names of at most {KUBERAY_NAME_MAX}, and the best trial becomes the run "
                f"NAME{BEST_SUFFIX}, within the {NAME_MAX} of any run name. Pick a shorter --name")
        return v

    @model_validator(mode="after")
    def _payload(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; known: {sorted(KINDS)}")
        need = KINDS[self.kind].payload
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind} job needs a '{need}' section")
        if self.kind == "transfer" and not self.train.init_from:
            raise ValueError("a transfer job starts from a pre-trained run: pass --from RUN (train.init_from)")
        return self

    @property
    def payload(self) -> BaseModel:
        return getattr(self, KINDS[self.kind].payload)

    @property
    def distributed(self) -> bool:
        """Replicas rendezvous (torch.distributed) only for kinds that say so."""
        return KINDS[self.kind].rendezvous and self.replicas > 1
