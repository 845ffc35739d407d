"""Where replicas run: one Backend interface, a local-process implementation (the default);
the Kubernetes one renders the same JobSpec into Indexed Jobs."""

from __future__ import annotations

from cxrjobs.backends.base import Backend, JobStatus, SubmitPlan
from cxrjobs.errors import ConfigError

BACKENDS = ("local",)


def get_backend(name: str = "local") -> Backend:
    if name == "local":
        from cxrjobs.backends.local import LocalBackend
        return LocalBackend()
    raise ConfigError(f"unknown backend {name!r}; available: {list(BACKENDS)}")


__all__ = ["Backend", "JobStatus", "SubmitPlan", "get_backend", "BACKENDS"]
