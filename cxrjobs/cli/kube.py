"""The Kubernetes options group of `cxrjobs submit ...`, added to a command by one decorator, and
`--namespace` for the commands that look at runs."""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar
from typing import TYPE_CHECKING, Optional

import typer
from pydantic import ValidationError

from cxrjobs.cli.common import validation_error
from cxrjobs.errors import ConfigError

if TYPE_CHECKING:  # built when a command runs: the models cost `cxrjobs --help` ~0.08 s
    from cxrjobs.backends.kubernetes.options import KubeOptions

PANEL = "Kubernetes options (--backend kubernetes)"
NAMESPACE_HELP = "Kubernetes namespace of the run"

_current: ContextVar[KubeOptions | None] = ContextVar("kube_options", default=None)


def namespace_option():
    return typer.Option("default", "--namespace", envvar="CXRJOBS_NAMESPACE", help=NAMESPACE_HELP)


def _opt(default, *decls, help: str, **kw):
    return typer.Option(default, *decls, help=help, rich_help_panel=PANEL, **kw)


# name -> (annotation, typer option): keyword parameters the decorator adds to a command.
_PARAMS = {
    "namespace": (str, _opt("default", "--namespace", envvar="CXRJOBS_NAMESPACE", help=NAMESPACE_HELP)),
    "image_repository": (str, _opt("", "--image-repository",
                                   help="registry/prefix of the cxrjobs-* images ('' = images loaded into the nodes)")),
    "image_tag": (Optional[str], _opt(None, "--image-tag", help="image tag (default: the package version)")),
    "cpu": (Optional[str], _opt(None, "--cpu", help="CPU request per pod (default 1)")),
    "cpu_limit": (Optional[str], _opt(None, "--cpu-limit", help="CPU limit per pod (default none)")),
    "memory": (Optional[str], _opt(None, "--memory", help="memory request per pod (default 2Gi)")),
    "memory_limit": (Optional[str], _opt(None, "--memory-limit", help="memory limit per pod (default 4Gi)")),
    "gpus": (Optional[int], _opt(None, "--gpus", help="nvidia.com/gpu per pod")),
    "shm_size": (Optional[str], _opt(None, "--shm-size", help="size of the memory-backed /dev/shm (default 1Gi)")),
    "node_selector": (Optional[list[str]], _opt(None, "--node-selector", help="KEY=VALUE, repeatable")),
    "toleration": (Optional[list[str]], _opt(None, "--toleration",
                                             help="KEY=VALUE:EFFECT or KEY:EFFECT, repeatable")),
    "service_account": (Optional[str], _opt(None, "--service-account", help="pods' service account")),
    "config_map": (Optional[str], _opt(None, "--config-map", help="ConfigMap with the store settings (default cxrjobs-config)")),
    "secret_name": (Optional[str], _opt(None, "--secret-name", help="Secret with the S3 credentials (default cxrjobs-s3)")),
    "ttl": (Optional[int], _opt(None, "--ttl", help="seconds a finished run's objects are kept (default 86400)")),
    "active_deadline": (Optional[int], _opt(None, "--active-deadline", help="seconds after which a run is stopped (default 259200)")),
}


def build_options(values: dict) -> KubeOptions:
    from cxrjobs.backends.kubernetes.options import KubeOptions, Toleration

    try:
        selectors = {}
        for item in values.get("node_selector") or []:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ConfigError(f"--node-selector {item!r}: expected KEY=VALUE")
            selectors[key] = value
        fields = {"namespace": values.get("namespace"), "image_repository": values.get("image_repository"),
                  "image_tag": values.get("image_tag"), "cpu": values.get("cpu"),
                  "cpu_limit": values.get("cpu_limit"), "memory": values.get("memory"),
                  "memory_limit": values.get("memory_limit"), "gpus": values.get("gpus"),
                  "shm_size": values.get("shm_size"), "node_selector": selectors or None,
                  "tolerations": [Toleration.parse(t) for t in values.get("toleration") or []] or None,
                  "service_account": values.get("service_account"), "config_map": values.get("config_map"),
                  "secret": values.get("secret_name"), "ttl_seconds_after_finished": values.get("ttl"),
                  "active_deadline_seconds": values.get("active_deadline")}
        return KubeOptions(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        raise validation_error(e, "Kubernetes options") from None


def kubernetes_options(fn):
    """Add the Kubernetes options group to a submit command; `current()` returns them while the
    command runs (the command's own parameters stay untouched)."""
    sig = inspect.signature(fn)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
             for name, (ann, opt) in _PARAMS.items()]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name, None) for name in _PARAMS}
        if kwargs.get("backend") == "local":  # they were ignored without a word
            given = [_PARAMS[n][1].param_decls[0] for n, v in values.items()
                     if n != "namespace" and v not in (None, "", [])]
            if given:
                raise ConfigError(f"{', '.join(given)}: Kubernetes options, and this job runs on the local "
                                  "backend (processes on this machine); add --backend kubernetes or leave them out")
        token = _current.set(build_options(values))
        try:
            return fn(*args, **kwargs)
        finally:
            _current.reset(token)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
    return wrapper


def current() -> KubeOptions | None:
    return _current.get()
