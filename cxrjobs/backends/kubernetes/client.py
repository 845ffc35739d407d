"""The few Kubernetes API calls the backend makes, over the official `kubernetes` client, with
plain dicts in and out (the same JSON shape the renderer produces and `kubectl get -o json`
shows) and API errors turned into messages a user can act on.

Imported only when a command talks to a cluster: the client library is slow to import, and
`--dry-run` must not need it.
"""

from __future__ import annotations

import codecs
from typing import Iterator

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from cxrjobs.errors import ConfigError, CxrError

RAY = ("ray.io", "v1", "rayjobs")
FOREGROUND = {"propagationPolicy": "Foreground"}


def connect(context: str | None = None) -> "KubeApi":
    """In-cluster config inside a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(context=context)
        except (k8s_config.ConfigException, OSError) as e:
            raise ConfigError(
                "no Kubernetes configuration: set KUBECONFIG (or create ~/.kube/config, e.g. with "
                f"`kind create cluster`), or run inside a pod ({e})") from None
    api = k8s.ApiClient()
    return KubeApi(k8s.BatchV1Api(api), k8s.CoreV1Api(api), k8s.CustomObjectsApi(api))


def _explain(e: ApiException, what: str) -> CxrError:
    if e.status == 403:
        return CxrError(f"{what}: forbidden; your Kubernetes user lacks the RBAC permission "
                        f"({(e.reason or '').strip()}). Ask for a Role with jobs, services, pods/log"
                        " and rayjobs in that namespace, or use --namespace")
    if e.status == 401:
        return CxrError(f"{what}: unauthorized; the kubeconfig's credentials were rejected")
    body = (e.body or "")[:400] if isinstance(e.body, str) else ""
    return CxrError(f"{what}: Kubernetes API error {e.status} {e.reason or ''} {body}".strip())


class KubeApi:
    """batch/v1 Jobs, core/v1 Services/Pods/logs and ray.io/v1 RayJobs, as dicts."""

    def __init__(self, batch, core, custom, serializer=None):
        self.batch, self.core, self.custom = batch, core, custom
        self._ser = serializer or k8s.ApiClient().sanitize_for_serialization

    def _dict(self, obj) -> dict:
        return obj if isinstance(obj, dict) else self._ser(obj)

    # --- create / read / delete ---------------------------------------------------------------
    def create(self, obj: dict) -> dict:
        ns, kind, name = obj["metadata"]["namespace"], obj["kind"], obj["metadata"]["name"]
        try:
            if kind == "Job":
                return self._dict(self.batch.create_namespaced_job(ns, obj))
            if kind == "Service":
                return self._dict(self.core.create_namespaced_service(ns, obj))
            if kind == "RayJob":
                return self._dict(self.custom.create_namespaced_custom_object(*RAY[:2], ns, RAY[2], obj))
        except ApiException as e:
            if e.status == 409:
                raise CxrError(f"{kind} {ns}/{name} already exists") from None
            if e.status == 404 and kind == "RayJob":
                raise CxrError("the cluster has no RayJob resource (ray.io/v1): install the KubeRay "
                               "operator v1.3 or newer first") from None
            raise _explain(e, f"cannot create {kind} {ns}/{name}") from None
        raise ValueError(f"no API call for kind {kind}")

    def _get(self, call, what: str) -> dict | None:
        try:
            return self._dict(call())
        except ApiException as e:
            if e.status == 404:
                return None
            raise _explain(e, what) from None

    def get_job(self, ns: str, name: str) -> dict | None:
        return self._get(lambda: self.batch.read_namespaced_job(name, ns), f"cannot read Job {ns}/{name}")

    def get_rayjob(self, ns: str, name: str) -> dict | None:
        return self._get(lambda: self.custom.get_namespaced_custom_object(*RAY[:2], ns, RAY[2], name),
                         f"cannot read RayJob {ns}/{name}")

    def get_config_map(self, ns: str, name: str) -> dict | None:
        return self._get(lambda: self.core.read_namespaced_config_map(name, ns),
                         f"cannot read ConfigMap {ns}/{name}")

    def list_jobs(self, ns: str, selector: str) -> list[dict]:
        got = self._get(lambda: self.batch.list_namespaced_job(ns, label_selector=selector),
                        f"cannot list Jobs in {ns}")
        return (got or {}).get("items") or []

    def list_rayjobs(self, ns: str, selector: str) -> list[dict]:
        # 404: KubeRay is not installed, so there are none.
        got = self._get(lambda: self.custom.list_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], label_selector=selector), f"cannot list RayJobs in {ns}")
        return (got or {}).get("items") or []

    def list_pods(self, ns: str, selector: str) -> list[dict]:
        got = self._get(lambda: self.core.list_namespaced_pod(ns, label_selector=selector),
                        f"cannot list pods in {ns}")
        return (got or {}).get("items") or []

    def delete(self, kind: str, ns: str, name: str) -> bool:
        """Delete with foreground propagation: the object stays (with a deletionTimestamp) until
        its pods and owned objects are gone. False when it did not exist."""
        try:
            if kind == "Job":
                self.batch.delete_namespaced_job(name, ns, body=FOREGROUND)
            elif kind == "RayJob":
                self.custom.delete_namespaced_custom_object(*RAY[:2], ns, RAY[2], name, body=FOREGROUND)
            else:
                raise ValueError(f"no delete call for kind {kind}")
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise _explain(e, f"cannot delete {kind} {ns}/{name}") from None

    # --- logs -----------------------------------------------------------------------------------
    def pod_log(self, ns: str, pod: str, container: str | None = None,
                follow: bool = False) -> Iterator[str]:
        """The pod's log as lines (each ending in a newline); with `follow`, until the container
        exits. A pod that is gone yields nothing."""
        kw = {"container": container} if container else {}
        try:
            if not follow:
                text = self.core.read_namespaced_pod_log(pod, ns, **kw)
                yield from text.splitlines(keepends=True)
                return
            resp = self.core.read_namespaced_pod_log(pod, ns, follow=True, _preload_content=False, **kw)
        except ApiException as e:
            if e.status in (404, 400):  # deleted, or its container has not started yet
                return
            raise _explain(e, f"cannot read the log of pod {ns}/{pod}") from None
        decoder, pending = codecs.getincrementaldecoder("utf-8")("replace"), ""
        try:
            for chunk in resp.stream(4096):
                pending += decoder.decode(chunk)
                *lines, pending = pending.split("\n")
                for line in lines:
                    yield line + "\n"
            pending += decoder.decode(b"", final=True)
            if pending:
                yield pending + "\n"
        finally:
            resp.release_conn()
