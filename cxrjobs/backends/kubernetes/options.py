"""The typed options of the Kubernetes renderer: everything a manifest depends on besides the job.

Rendering reads nothing else (no environment, no kubeconfig), so a dry-run on a laptop prints
exactly what `schedule` creates on the cluster.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrjobs import __version__

QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

# Object names agreed with the Helm chart (see CONTRACTS): store settings and S3 credentials.
CONFIG_MAP = "cxrjobs-config"
SECRET = "cxrjobs-s3"


TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
REPOSITORY_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity_value(q: str) -> float:
    """A Kubernetes quantity (validated by QUANTITY_RE) as a number, to compare two of them."""
    m = QUANTITY_RE.match(str(q))
    number = str(q)[:len(str(q)) - len(m.group(2) or "")]
    return float(number) * _SUFFIX[m.group(2) or ""]


def _quantity(v: str | None, field: str) -> str | None:
    if v is not None and not QUANTITY_RE.match(str(v)):
        raise ValueError(f"{field} {v!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return None if v is None else str(v)


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """'key=value:Effect', 'key:Effect' (operator Exists) or 'key=value' (any effect)."""
        body, _, effect = text.partition(":")
        key, eq, value = body.partition("=")
        return cls(key=key or None, operator="Equal" if eq else "Exists", value=value if eq else None,
                   effect=effect or None)

    def to_k8s(self) -> dict:
        d = {"key": self.key, "operator": self.operator, "value": self.value, "effect": self.effect,
             "tolerationSeconds": self.toleration_seconds}
        return {k: v for k, v in d.items() if v is not None}


class KubeOptions(BaseModel):
    """Where and how a job's pods run on Kubernetes."""
    model_config = ConfigDict(extra="forbid")

    namespace: str = "default"
    image_repository: str = Field("", description="registry/prefix of the cxrjobs-* images; '' = local images (kind load)")
    image_tag: str = __version__
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    cpu: str = Field("1", description="CPU request per pod")
    cpu_limit: str | None = Field(None, description="CPU limit per pod (default: none)")
    memory: str = Field("2Gi", description="memory request per pod")
    memory_limit: str | None = Field("4Gi", description="memory limit per pod")
    gpus: int = Field(0, ge=0, description="nvidia.com/gpu per pod")
    shm_size: str = Field("1Gi", description="size of the memory-backed /dev/shm")
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    service_account: str | None = None
    config_map: str = Field(CONFIG_MAP, description="ConfigMap with CXRJOBS_STORE, CXRJOBS_S3_ENDPOINT, ...")
    secret: str = Field(SECRET, description="Secret with CXRJOBS_S3_ACCESS_KEY / CXRJOBS_S3_SECRET_KEY")
    ttl_seconds_after_finished: int = Field(86400, ge=0, description="finished Jobs are deleted after this")
    active_deadline_seconds: int = Field(3 * 86400, ge=1, description="a run is stopped after this")
    master_port: int = Field(29500, ge=1, le=65535)
    ray_version: str = "2.60.0"
    run_as_user: int = Field(10001, ge=1, description="the images' non-root user")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not DNS_LABEL_RE.match(v):
            raise ValueError(f"namespace {v!r} is not a DNS label (lower-case letters, digits, '-')")
        return v

    @field_validator("config_map", "secret", "service_account")
    @classmethod
    def _object_name(cls, v: str | None, info) -> str | None:
        if v is not None and not DNS_SUBDOMAIN_RE.match(v):
            raise ValueError(f"{info.field_name} {v!r} is not a valid Kubernetes object name")
        return v

    @field_validator("cpu", "cpu_limit", "memory", "memory_limit", "shm_size")
    @classmethod
    def _quantities(cls, v, info):
        return _quantity(v, info.field_name)

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not TAG_RE.match(v):
            raise ValueError(f"image_tag {v!r} is not an image tag (letters, digits, '_', '.', '-'; at most "
                             "128, not starting with '.' or '-')")
        return v

    @field_validator("image_repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        if v and not REPOSITORY_RE.match(v.rstrip("/")):
            raise ValueError(f"image_repository {v!r} is not an image repository (lower-case path parts like "
                             "registry.example.org:5000/team; no tag)")
        return v

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            prefix, _, name = key.rpartition("/")
            if (prefix and not DNS_SUBDOMAIN_RE.match(prefix)) or not LABEL_NAME_RE.match(name):
                raise ValueError(f"node_selector key {key!r} is not a label key ([prefix/]name: a name of at most "
                                 "63 letters, digits, '-', '_', '.', starting and ending alphanumeric)")
            if value and not LABEL_NAME_RE.match(value):
                raise ValueError(f"node_selector value {value!r} of {key!r} is not a label value (at most 63 "
                                 "letters, digits, '-', '_', '.', starting and ending alphanumeric)")
        return v

    @model_validator(mode="after")
    def _requests_within_limits(self):
        # A request above the default memory limit raises that limit to it (--memory 8Gi alone);
        # one above a limit the user gave is refused, as the API server would refuse the pod.
        if ("memory_limit" not in self.model_fields_set and self.memory_limit is not None
                and quantity_value(self.memory) > quantity_value(self.memory_limit)):
            self.memory_limit = self.memory
        for what, request, limit in (("cpu", self.cpu, self.cpu_limit), ("memory", self.memory, self.memory_limit)):
            if limit is not None and quantity_value(request) > quantity_value(limit):
                raise ValueError(f"{what} request {request} is above its limit {limit}: raise --{what}-limit "
                                 f"or lower --{what}")
        return self

    def image(self, name: str) -> str:
        repo = self.image_repository.rstrip("/")
        return f"{repo + '/' if repo else ''}{name}:{self.image_tag}"
