"""Where replicas run: one Backend interface, a local-process implementation (the default) and
a Kubernetes one that renders the same JobSpec into Indexed Jobs (or KubeRay RayJobs)."""

from __future__ import annotations

# No import of base here: the CLI and the option models import this package, and base pulls in the
# job specs (pydantic models of every kind): about 0.15 s of `cxrjobs --help`.
from cxrjobs.errors import ConfigError

BACKENDS = ("local", "kubernetes")


def get_backend(name: str = "local", kube=None):
    """`kube`: KubeOptions for the kubernetes backend (namespace, images, resources, ...)."""
    if name == "local":
        from cxrjobs.backends.local import LocalBackend
        return LocalBackend()
    if name == "kubernetes":
        from cxrjobs.backends.kubernetes.backend import KubernetesBackend
        return KubernetesBackend(kube)
    raise ConfigError(f"unknown backend {name!r}; available: {list(BACKENDS)}")


__all__ = ["get_backend", "BACKENDS"]
