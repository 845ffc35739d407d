"""A fake of the three Kubernetes API classes the backend calls (BatchV1Api, CoreV1Api,
CustomObjectsApi), for tests.

No Kubernetes API server can run on this machine (no kind, no container runtime for a control
plane), so this is the one mock the test suite has. It keeps objects as dicts, answers with the
real client's `ApiException` (404 not found, 409 conflict), records every call, garbage-collects
objects whose owner is deleted (as the API server's GC does for ownerReferences), and lets a test
play the Job controller: create the pods of an Indexed Job, end them with exit codes, set the
Job's conditions.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
import uuid

from kubernetes.client.exceptions import ApiException

INDEX = "batch.kubernetes.io/job-completion-index"
_clock = itertools.count(1)


def _ts() -> str:
    # Strictly increasing timestamps, so "newest pod" is well defined within a test.
    n = next(_clock)
    return f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z"


def _match(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


class _Resp:
    """What read_namespaced_pod_log(..., _preload_content=False) returns: a urllib3 response."""

    def __init__(self, cluster, ns, pod):
        self.cluster, self.ns, self.pod = cluster, ns, pod
        self.released = False

    def stream(self, amt=4096):
        sent = 0
        while True:
            with self.cluster.lock:
                p = self.cluster.pods.get((self.ns, self.pod))
                text = self.cluster.logs.get((self.ns, self.pod), "")
                ended = p is None or p["status"]["phase"] in ("Succeeded", "Failed")
            if len(text) > sent:
                data = text[sent:].encode()
                sent = len(text)
                for i in range(0, len(data), 7):  # small chunks: lines split across chunks
                    yield data[i:i + 7]
                continue
            if ended:
                return
            time.sleep(0.02)

    def release_conn(self):
        self.released = True


class FakeCluster:
    def __init__(self):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.rayjobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.config_maps: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.calls: list[tuple] = []
        self.lock = threading.RLock()
        self.fail_next: dict[str, ApiException] = {}
        self.batch, self.core, self.custom = _Batch(self), _Core(self), _Custom(self)

    # --- helpers for the API classes ------------------------------------------------------------
    def _call(self, name, *args):
        self.calls.append((name, *args))
        if name in self.fail_next:
            raise self.fail_next.pop(name)

    def _new(self, table, ns, body):
        body = copy.deepcopy(body)
        name = body["metadata"]["name"]
        if (ns, name) in table:
            raise ApiException(status=409, reason="AlreadyExists")
        body["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_ts(), namespace=ns)
        body.setdefault("status", {})
        table[(ns, name)] = body
        return copy.deepcopy(body)

    @staticmethod
    def _get(table, ns, name):
        if (ns, name) not in table:
            raise ApiException(status=404, reason="NotFound")
        return copy.deepcopy(table[(ns, name)])

    def _delete(self, table, ns, name, body):
        if (ns, name) not in table:
            raise ApiException(status=404, reason="NotFound")
        obj = table[(ns, name)]
        if (body or {}).get("propagationPolicy") == "Foreground":
            obj["metadata"]["deletionTimestamp"] = _ts()  # stays until dependents are gone
            obj["metadata"].setdefault("finalizers", []).append("foregroundDeletion")
        else:
            self.gc(table, ns, name)

    def gc(self, table, ns, name):
        """Finish a deletion: dependents (pods, owned Services) first, then the object."""
        with self.lock:
            obj = table.pop((ns, name))
            uid = obj["metadata"]["uid"]
            for key, pod in list(self.pods.items()):
                if pod["metadata"]["labels"].get("job-name") == name and key[0] == ns:
                    del self.pods[key]
            for key, svc in list(self.services.items()):
                if any(r.get("uid") == uid for r in svc["metadata"].get("ownerReferences") or []):
                    del self.services[key]

    def _list(self, table, ns, selector):
        return {"items": [copy.deepcopy(o) for (n, _), o in sorted(table.items())
                          if n == ns and _match(o["metadata"].get("labels") or {}, selector)]}

    # --- playing the Job controller ---------------------------------------------------------------
    def start_pod(self, ns: str, job: str, index: int, phase: str = "Running", log: str = "") -> str:
        with self.lock:
            j = self.jobs[(ns, job)]
            tpl = j["spec"]["template"]
            attempt = sum(1 for (n, p) in self.pods if n == ns and p.startswith(f"{job}-{index}-"))
            name = f"{job}-{index}-{attempt}x"
            labels = dict(tpl["metadata"]["labels"], **{"job-name": job, INDEX: str(index)})
            self.pods[(ns, name)] = {
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                             "annotations": {INDEX: str(index)}, "creationTimestamp": _ts(),
                             "uid": str(uuid.uuid4())},
                "spec": copy.deepcopy(tpl["spec"]),
                "status": {"phase": phase}}
            self.logs[(ns, name)] = log
            st = j["status"]
            st["active"] = int(st.get("active") or 0) + 1
            st.setdefault("startTime", _ts())
            return name

    def start_ray_pod(self, ns: str, rayjob: str, role: str, n: int = 0, log: str = "") -> str:
        with self.lock:
            rj = self.rayjobs[(ns, rayjob)]
            if role == "submitter":
                tpl = rj["spec"]["submitterPodTemplate"]
            elif role == "head":
                tpl = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
            else:
                tpl = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
            name = f"{rayjob}-{role}-{n}"
            self.pods[(ns, name)] = {"metadata": {"name": name, "namespace": ns, "creationTimestamp": _ts(),
                                                  "labels": dict(tpl["metadata"]["labels"])},
                                     "spec": copy.deepcopy(tpl["spec"]), "status": {"phase": "Running"}}
            self.logs[(ns, name)] = log
            return name

    def write_log(self, ns: str, pod: str, text: str) -> None:
        with self.lock:
            self.logs[(ns, pod)] = self.logs.get((ns, pod), "") + text

    def end_pod(self, ns: str, pod: str, exit_code: int, disruption: bool = False) -> None:
        with self.lock:
            p = self.pods[(ns, pod)]
            p["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            p["status"]["containerStatuses"] = [{"name": "replica", "state": {
                "terminated": {"exitCode": exit_code}}}]
            if disruption:
                p["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True"}]
            job = self.jobs[(ns, p["metadata"]["labels"]["job-name"])]
            st = job["status"]
            st["active"] = max(0, int(st.get("active") or 0) - 1)
            if exit_code == 0:
                st["succeeded"] = int(st.get("succeeded") or 0) + 1
            elif not disruption:  # podFailurePolicy Ignore: not counted
                st["failed"] = int(st.get("failed") or 0) + 1

    def delete_pod(self, ns: str, pod: str) -> None:
        with self.lock:
            del self.pods[(ns, pod)]
            self.logs.pop((ns, pod), None)
            job = self.jobs[(ns, pod.rsplit("-", 2)[0])]
            job["status"]["active"] = max(0, int(job["status"].get("active") or 0) - 1)

    def set_condition(self, ns: str, job: str, ctype: str, reason: str = "", message: str = "") -> None:
        with self.lock:
            st = self.jobs[(ns, job)]["status"]
            st.setdefault("conditions", []).append(
                {"type": ctype, "status": "True", "reason": reason, "message": message})
            if ctype in ("Complete", "Failed"):
                st["completionTime"] = _ts()


class _Batch:
    def __init__(self, c: FakeCluster):
        self.c = c

    def create_namespaced_job(self, namespace, body):
        self.c._call("create_namespaced_job", namespace, body)
        return self.c._new(self.c.jobs, namespace, body)

    def read_namespaced_job(self, name, namespace):
        self.c._call("read_namespaced_job", name, namespace)
        return self.c._get(self.c.jobs, namespace, name)

    def list_namespaced_job(self, namespace, label_selector=None):
        self.c._call("list_namespaced_job", namespace, label_selector)
        return self.c._list(self.c.jobs, namespace, label_selector)

    def delete_namespaced_job(self, name, namespace, body=None):
        self.c._call("delete_namespaced_job", name, namespace, body)
        self.c._delete(self.c.jobs, namespace, name, body)


class _Core:
    def __init__(self, c: FakeCluster):
        self.c = c

    def create_namespaced_service(self, namespace, body):
        self.c._call("create_namespaced_service", namespace, body)
        return self.c._new(self.c.services, namespace, body)

    def read_namespaced_config_map(self, name, namespace):
        self.c._call("read_namespaced_config_map", name, namespace)
        return self.c._get(self.c.config_maps, namespace, name)

    def list_namespaced_pod(self, namespace, label_selector=None):
        self.c._call("list_namespaced_pod", namespace, label_selector)
        with self.c.lock:
            return self.c._list(self.c.pods, namespace, label_selector)

    def read_namespaced_pod_log(self, name, namespace, container=None, follow=False,
                                _preload_content=True):
        self.c._call("read_namespaced_pod_log", name, namespace, container, follow)
        with self.c.lock:
            if (namespace, name) not in self.c.pods:
                raise ApiException(status=404, reason="NotFound")
            if self.c.pods[(namespace, name)]["status"]["phase"] == "Pending":
                raise ApiException(status=400, reason="BadRequest")
            if container not in (None, *(x["name"] for x in self.c.pods[(namespace, name)]["spec"]["containers"])):
                raise ApiException(status=400, reason=f"container {container} is not valid")
            if not follow:
                return self.c.logs.get((namespace, name), "")
        return _Resp(self.c, namespace, name)


class _Custom:
    def __init__(self, c: FakeCluster):
        self.c = c

    def _check(self, group, version, plural):
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs"), (group, version, plural)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        self.c._call("create_namespaced_custom_object", namespace, body)
        return self.c._new(self.c.rayjobs, namespace, body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.c._call("get_namespaced_custom_object", namespace, name)
        return self.c._get(self.c.rayjobs, namespace, name)

    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=None):
        self._check(group, version, plural)
        self.c._call("list_namespaced_custom_object", namespace, label_selector)
        return self.c._list(self.c.rayjobs, namespace, label_selector)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None):
        self._check(group, version, plural)
        self.c._call("delete_namespaced_custom_object", namespace, name, body)
        self.c._delete(self.c.rayjobs, namespace, name, body)
