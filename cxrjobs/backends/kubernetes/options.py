"""The typed options of the Kubernetes renderer: everything a manifest depends on besides the job.

Rendering reads nothing else (no environment, no kubeconfig), so a dry-run on a laptop prints
exactly what `schedule` creates on the cluster.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrjobs import __version__

# Kubernetes' quantity grammar (k8s.io/apimachinery resource.ParseQuantity), less the sign: a pod
# resource must not be negative. <number><suffix>, the number 5, 5.5, 5. or .5 and the suffix a
# binary (Ki..Ei), a decimal SI (n, u, m, '', k..E) or a decimal exponent (e3, E-2;
# two digits at most: nothing larger is a pod's resource).
QUANTITY_RE = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                         r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,2})?$")
_SUFFIX = {"": 1, "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# RFC 1123 subdomain (dot-separated labels, 253 at most): object names and label-key prefixes.
DNS_SUBDOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A label key's name part and a (non-empty) label value: k8s.io/apimachinery validation.
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_RULE = "at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric"
# The image reference grammar of distribution/reference, lower case only: a registry host
# (optional :port) and path components joined by '/'; each component's separators are '.', '_',
# '__' or a run of '-'. The tag: a word character first, then up to 127 of [A-Za-z0-9_.-].
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN = r"([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9])(\.([a-z0-9]|[a-z0-9][-a-z0-9]*[a-z0-9]))*(:[0-9]+)?"
REPOSITORY_RE = re.compile(rf"^({_DOMAIN}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# distribution/reference's 255 characters for a whole name, less the longest image's "/<name>".
REPOSITORY_MAX = 255 - len("/cxrjobs-preprocess")

# Object names agreed with the Helm chart (see CONTRACTS): store settings and S3 credentials.
CONFIG_MAP = "cxrjobs-config"
SECRET = "cxrjobs-s3"
# The CLI flag of each option, so that an error names what the user typed.
FLAGS = {"cpu": "--cpu", "cpu_limit": "--cpu-limit", "memory": "--memory", "memory_limit": "--memory-limit",
         "shm_size": "--shm-size", "image_tag": "--image-tag", "image_repository": "--image-repository",
         "node_selector": "--node-selector", "namespace": "--namespace", "config_map": "--config-map",
         "secret": "--secret-name", "service_account": "--service-account", "tolerations": "--toleration"}


def quantity_value(q: str) -> Fraction:
    """A Kubernetes quantity (one QUANTITY_RE matches) as an exact number, to compare two of them
    (exact: 1000m and 1, or 1Gi and 1073741824, compare equal)."""
    m = QUANTITY_RE.match(str(q))
    if m is None:
        raise ValueError(f"{q!r} is not a Kubernetes quantity")
    number, suffix = Fraction(m.group("number")), m.group("suffix") or ""
    if suffix in _SUFFIX:  # before the exponent: "Ei" also starts with "E"
        return number * _SUFFIX[suffix]
    return number * Fraction(10) ** int(suffix[1:])


def _quantity(v: str | None, field: str) -> str | None:
    if v is not None and not QUANTITY_RE.match(str(v)):
        raise ValueError(f"{FLAGS[field]} {v!r} is not a Kubernetes quantity: a non-negative number with an "
                         "optional suffix m, k, M, G, T or Ki, Mi, Gi, Ti (e.g. 500m, 2, 4Gi; not 4GB or 4g)")
    return None if v is None else str(v)


def check_label_key(key: str, flag: str) -> str:
    """A label (or toleration) key: [prefix/]name, the prefix a DNS subdomain (Kubernetes'
    IsQualifiedName); the API server refuses any other, after the dry-run looked fine."""
    parts = key.split("/")
    if len(parts) > 2 or (len(parts) == 2 and not DNS_SUBDOMAIN_RE.match(parts[0])) \
            or not LABEL_NAME_RE.match(parts[-1]):
        raise ValueError(f"{flag}: {key!r} is not a Kubernetes label key: [PREFIX/]NAME, the NAME {LABEL_RULE}, "
                         "the optional PREFIX a DNS subdomain (lower-case, e.g. kubernetes.io)")
    return key


def check_label_value(value: str, key: str, flag: str) -> str:
    if value and not LABEL_NAME_RE.match(value):
        raise ValueError(f"{flag}: the value {value!r} of {key!r} is not a Kubernetes label value: empty or "
                         f"{LABEL_RULE}")
    return value


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

    @model_validator(mode="after")
    def _valid(self):
        # The API server's rules for a pod's tolerations (ValidateTolerations), checked here so
        # that a dry-run never prints a pod the cluster refuses.
        flag = FLAGS["tolerations"]
        if self.key is not None:
            check_label_key(self.key, flag)
        elif self.operator != "Exists":
            raise ValueError(f"{flag}: a toleration without a key tolerates every taint and takes no value; "
                             "give KEY=VALUE:EFFECT or KEY:EFFECT")
        if self.value is not None:
            if self.operator == "Exists" and self.value:
                raise ValueError(f"{flag}: the toleration of {self.key!r} has operator Exists and so no value")
            check_label_value(self.value, self.key or "", flag)
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(f"{flag}: tolerationSeconds needs the effect NoExecute")
        return self

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
            raise ValueError(f"--namespace {v!r} is not a DNS label (at most 63 lower-case letters, digits, '-', "
                             "starting and ending alphanumeric)")
        return v

    @field_validator("config_map", "secret", "service_account")
    @classmethod
    def _object_name(cls, v: str | None, info) -> str | None:
        if v is not None and not DNS_SUBDOMAIN_RE.match(v):
            raise ValueError(f"{FLAGS[info.field_name]} {v!r} is not a valid Kubernetes object name (lower-case "
                             "letters, digits, '-', '.', starting and ending alphanumeric)")
        return v

    @field_validator("cpu", "cpu_limit", "memory", "memory_limit", "shm_size")
    @classmethod
    def _quantities(cls, v, info):
        return _quantity(v, info.field_name)

    @field_validator("cpu_limit", "memory_limit")
    @classmethod
    def _limit_not_below_request(cls, v: str | None, info) -> str | None:
        # The API server refuses a pod whose request is above its limit ("must be less than or
        # equal to ... limit"). Fields validate in order, so the request is in info.data (absent
        # when it was itself invalid: that error is reported already). A limit left at its
        # default runs no field validator: _default_memory_limit raises it instead.
        what = info.field_name.removesuffix("_limit")
        request = info.data.get(what)
        if v is not None and request is not None and quantity_value(request) > quantity_value(v):
            raise ValueError(f"{FLAGS[info.field_name]} {v} is below the {FLAGS[what]} request {request}, which "
                             f"Kubernetes refuses: raise {FLAGS[info.field_name]} or lower {FLAGS[what]}")
        return v

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not TAG_RE.match(v):
            raise ValueError(f"--image-tag {v!r} is not an image tag: letters, digits, '_', '.', '-', at most 128, "
                             "not starting with '.' or '-' (the tag only: no ':' or '@')")
        return v

    @field_validator("image_repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        # The images are <repository>/cxrjobs-<name>:<tag>; a reference with upper case or a tag
        # in it renders fine but no kubelet can pull it.
        if v and (not REPOSITORY_RE.match(v.rstrip("/")) or len(v.rstrip("/")) > REPOSITORY_MAX):
            raise ValueError(f"--image-repository {v!r} is not an image repository: lower-case path parts like "
                             f"registry.example.org:5000/team, at most {REPOSITORY_MAX} characters, no tag or digest")
        return v

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            check_label_key(key, f"--node-selector {key}={value}")
            check_label_value(value, key, f"--node-selector {key}={value}")
        return v

    @model_validator(mode="after")
    def _default_memory_limit(self):
        # A request above the default memory limit raises that limit to it (--memory 8Gi alone);
        # one above a limit the user gave is refused by _limit_not_below_request.
        if ("memory_limit" not in self.model_fields_set and self.memory_limit is not None
                and quantity_value(self.memory) > quantity_value(self.memory_limit)):
            self.memory_limit = self.memory
        return self

    def image(self, name: str) -> str:
        repo = self.image_repository.rstrip("/")
        return f"{repo + '/' if repo else ''}{name}:{self.image_tag}"
