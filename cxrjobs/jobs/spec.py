"""A job: a kind, its payload spec, and how many replicas run it with what failure policy.

The same JobSpec is rendered by every backend (local processes now, Kubernetes Indexed Jobs
later) and stored as runs/<name>/spec.json, which each replica reads at start.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxrjobs.data.preprocess import PreprocessSpec
from cxrjobs.train.spec import TrainSpec

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")  # a valid Kubernetes Job name
JobKind = Literal["nih-train", "preprocess"]


def new_run_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class PreprocessJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: PreprocessSpec
    output: str = Field(description="dataset prefix in the store, e.g. datasets/nih-224")
    workers: int = Field(1, ge=1, description="processes per replica")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    name: str
    replicas: int = Field(1, ge=1, le=1024)
    backoff_limit: int = Field(3, ge=0, description="group restarts after a replica fails")
    rendezvous_timeout: float = Field(300.0, gt=0, description="seconds to wait for all replicas")
    train: TrainSpec | None = None
    preprocess: PreprocessJob | None = None

    @model_validator(mode="after")
    def _payload(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: use lower-case letters, digits and '-', at most "
                             "52 characters (it becomes a Kubernetes object name)")
        need = {"nih-train": "train", "preprocess": "preprocess"}[self.kind]
        if getattr(self, need) is None:
            raise ValueError(f"a {self.kind} job needs a '{need}' section")
        return self

    @property
    def distributed(self) -> bool:
        """Replicas rendezvous (torch.distributed) only for training; preprocess slices don't."""
        return self.kind != "preprocess" and self.replicas > 1
