"""The Kubernetes backend: submit (the rendered objects), status, logs per replica (with follow),
cancel (delete with foreground propagation) and list, in one namespace.

The API client is created on first use (kubeconfig, or the in-cluster config inside a pod), so a
dry-run never touches a cluster or imports the client library.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import datetime
from typing import Iterator

from cxrjobs.backends.base import Backend, JobStatus, SubmitPlan
from cxrjobs.backends.kubernetes.options import KubeOptions
from cxrjobs.backends.kubernetes.render import (CONTAINER, ROLE_LABEL, RUN_LABEL, owner_reference,
                                                render, run_selector)
from cxrjobs.backends.states import RunState, job_state, latest_pods, pod_index, pod_state, rayjob_state
from cxrjobs.errors import CxrError
from cxrjobs.jobs.spec import JobSpec, check_run_name

MANAGED = "app.kubernetes.io/managed-by=cxrjobs"
RAY_ROLES = ("submitter", "head", "worker")


def _epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubernetesBackend(Backend):
    name = "kubernetes"
    needs_shared_store = True

    def __init__(self, options: KubeOptions | None = None, api=None):
        self.options = options or KubeOptions()
        self._api = api

    @property
    def api(self):
        if self._api is None:
            from cxrjobs.backends.kubernetes.client import connect
            self._api = connect()
        return self._api

    @property
    def ns(self) -> str:
        return self.options.namespace

    # --- submit ---------------------------------------------------------------------------------
    def submit_dryrun(self, job: JobSpec) -> SubmitPlan:
        return SubmitPlan(job.name, self.name, job, render(job, self.options), text_format="yaml")

    def preflight(self, store) -> None:
        """The pods read the run's spec from the store their ConfigMap names: it must be the
        store this submission writes to (endpoints may differ: in-cluster DNS vs a port-forward)."""
        name = self.options.config_map
        cm = self.api.get_config_map(self.ns, name)
        if cm is None:
            raise CxrError(
                f"ConfigMap {self.ns}/{name} not found; the pods take their store settings from it. "
                "Install the Helm chart, or: kubectl -n {ns} create configmap {name} "
                "--from-literal=CXRJOBS_STORE={store} --from-literal=CXRJOBS_S3_ENDPOINT=HOST:PORT "
                "(and a Secret {secret} with CXRJOBS_S3_ACCESS_KEY / CXRJOBS_S3_SECRET_KEY)".format(
                    ns=self.ns, name=name, store=store.url, secret=self.options.secret))
        theirs = ((cm.get("data") or {}).get("CXRJOBS_STORE") or "").rstrip("/")
        if theirs != store.url.rstrip("/"):
            raise CxrError(
                f"ConfigMap {self.ns}/{name} gives the pods CXRJOBS_STORE={theirs or '(unset)'}, but this "
                f"submission writes the run to {store.url}; the pods would not find it. Set "
                f"CXRJOBS_STORE={theirs} here, or fix the ConfigMap")

    def schedule(self, plan: SubmitPlan) -> JobStatus:
        for obj in plan.objects:
            if obj["kind"] in ("Job", "RayJob"):
                old = self._get(obj["kind"], obj["metadata"]["name"])
                if old is not None:
                    st = self._status_of(old)
                    raise CxrError(
                        f"run {plan.run} already exists in namespace {self.ns} ({st.state}); "
                        + ("cancel it first or pick another --name" if not st.done else
                           f"`cxrjobs cancel {plan.run} --backend kubernetes` deletes the finished "
                           "Job (else it goes ttlSecondsAfterFinished after its end); resubmitting "
                           "the same spec then resumes from its checkpoint"))
        created: dict[str, dict] = {}
        for obj in plan.objects:
            if obj["kind"] == "Service" and "Job" in created:
                # Owned by the Job, so deleting the Job (cancel, TTL) deletes the Service too.
                obj = {**obj, "metadata": {**obj["metadata"],
                                           "ownerReferences": [owner_reference(created["Job"])]}}
            try:
                created[obj["kind"]] = self.api.create(obj)
            except CxrError:
                if "Job" in created:  # no half-created run: a Job without its Service never rendezvous
                    self.api.delete("Job", self.ns, plan.run)
                raise
        return self.status(plan.run)

    # --- status ---------------------------------------------------------------------------------
    def _get(self, kind: str, run: str) -> dict | None:
        return self.api.get_job(self.ns, run) if kind == "Job" else self.api.get_rayjob(self.ns, run)

    def _find(self, run: str) -> dict:
        check_run_name(run)
        obj = self.api.get_job(self.ns, run) or self.api.get_rayjob(self.ns, run)
        if obj is None:
            raise CxrError(f"no run {run!r} in namespace {self.ns} (finished runs are deleted "
                           "ttlSecondsAfterFinished after their end; `cxrjobs runs --backend "
                           "kubernetes` lists them)")
        if not obj.get("kind"):
            obj["kind"] = "Job" if "completionMode" in (obj.get("spec") or {}) else "RayJob"
        return obj

    def _status_of(self, obj: dict, pods: list[dict] | None = None) -> JobStatus:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        run = meta.get("name", "")
        labels = meta.get("labels") or {}
        if pods is None:
            pods = self.api.list_pods(self.ns, run_selector(run))
        if obj.get("kind") == "RayJob":
            state, message = rayjob_state(obj)
            groups = (spec.get("rayClusterSpec") or {}).get("workerGroupSpecs") or [{}]
            return JobStatus(run=run, state=state, backend=self.name,
                             kind=labels.get("app.kubernetes.io/component", ""),
                             replicas=int(groups[0].get("replicas") or 0),
                             restarts=int(status.get("failed") or 0), message=message,
                             started=_epoch(status.get("startTime")), finished=_epoch(status.get("endTime")),
                             extra={"namespace": self.ns, "ray_cluster": status.get("rayClusterName"),
                                    "ray_job_id": status.get("jobId"),
                                    "pods": self._pod_rows(pods, ray=True)})
        state, message = job_state(obj, pods)
        return JobStatus(run=run, state=state, backend=self.name,
                         kind=labels.get("app.kubernetes.io/component", ""),
                         replicas=int(spec.get("completions") or 0),
                         restarts=int(status.get("failed") or 0), message=message,
                         started=_epoch(status.get("startTime")),
                         finished=_epoch(status.get("completionTime")) if state is RunState.SUCCEEDED
                         else None,
                         extra={"namespace": self.ns, "succeeded": int(status.get("succeeded") or 0),
                                "pods": self._pod_rows(pods)})

    @staticmethod
    def _pod_rows(pods: list[dict], ray: bool = False) -> list[dict]:
        rows = []
        for p in (_ray_order(pods) if ray else latest_pods(pods)):
            meta = p.get("metadata") or {}
            rows.append({"pod": meta.get("name"), "state": str(pod_state(p)),
                         ("role" if ray else "index"): ((meta.get("labels") or {}).get(ROLE_LABEL) if ray
                                                        else pod_index(p))})
        return rows

    def status(self, run: str) -> JobStatus:
        return self._status_of(self._find(run))

    def list(self) -> list[JobStatus]:
        pods: dict[str, list[dict]] = {}
        for p in self.api.list_pods(self.ns, MANAGED):
            pods.setdefault(((p.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL), []).append(p)
        out = []
        for kind, items in (("Job", self.api.list_jobs(self.ns, MANAGED)),
                            ("RayJob", self.api.list_rayjobs(self.ns, MANAGED))):
            for obj in items:
                obj["kind"] = obj.get("kind") or kind
                out.append(self._status_of(obj, pods.get(obj["metadata"]["name"], [])))
        return sorted(out, key=lambda s: s.run)

    # --- logs -----------------------------------------------------------------------------------
    def _replica_pods(self, obj: dict, pods: list[dict]) -> dict[int, dict]:
        """replica number -> its newest pod. Indexed Job: the completion index. RayJob: 0 is the
        submitter (it prints the driver's output), 1 the head, 2.. the workers."""
        if obj.get("kind") == "RayJob":
            return dict(enumerate(_ray_order(pods)))
        return {pod_index(p): p for p in latest_pods(pods) if pod_index(p) is not None}

    def _replica_count(self, obj: dict) -> int:
        if obj.get("kind") == "RayJob":
            groups = (obj["spec"].get("rayClusterSpec") or {}).get("workerGroupSpecs") or [{}]
            return 2 + int(groups[0].get("replicas") or 0)
        return int(obj["spec"].get("completions") or 0)

    def logs(self, run: str, replica: int | None = None, follow: bool = False) -> Iterator[str]:
        try:
            obj = self._find(run)
        except CxrError:
            # The Job is gone (ttlSecondsAfterFinished, or deleted): its pods' output was
            # mirrored into the store by the entrypoint (cxrjobs.jobs.logmirror).
            stored = self._stored_logs(run, replica)
            if stored is None:
                raise
            yield from stored
            return
        n = self._replica_count(obj)
        if replica is not None and not 0 <= replica < n:
            raise CxrError(f"run {run} has replicas 0..{n - 1}; --replica {replica} does not exist")
        container = CONTAINER if obj.get("kind") == "Job" else None
        prefix = replica is None and n > 1

        def wanted(pods) -> list[tuple[int, dict]]:
            by_replica = self._replica_pods(obj, pods)
            return sorted((i, p) for i, p in by_replica.items() if replica is None or i == replica) \
                if by_replica else []

        def tag(i: int, line: str) -> str:
            return f"[replica {i}] {line}" if prefix else line

        pods = self.api.list_pods(self.ns, run_selector(run))
        if not follow:
            for i, p in wanted(pods):
                if pod_state(p) is RunState.PENDING:
                    continue
                for line in self.api.pod_log(self.ns, p["metadata"]["name"], container):
                    yield tag(i, line)
            return
        yield from self._follow(run, wanted, tag, container, pods)

    @staticmethod
    def _stored_logs(run: str, replica: int | None) -> list[str] | None:
        """The replicas' logs as the store has them, or None when it has none of this run."""
        from cxrjobs.jobs.logmirror import log_key
        from cxrjobs.storage import join_key, open_store

        try:
            store = open_store()
            keys = sorted(o.key for o in store.list(join_key("runs", run, "logs"))
                          if o.key.endswith(".log") and "/replica-" in o.key)
        except CxrError:
            return None
        if replica is not None:
            keys = [k for k in keys if k == log_key(run, replica)]
        if not keys:
            return None
        lines = [f"(run {run} is no longer in the cluster; its replicas' logs from {store.url})\n"]
        for key in keys:
            name = key.rsplit("/", 1)[-1].removesuffix(".log")
            prefix = f"[{name.replace('-', ' ')}] " if replica is None and len(keys) > 1 else ""
            lines += [prefix + line for line in store.get_text(key).splitlines(keepends=True)]
        return lines

    def _follow(self, run, wanted, tag, container, pods) -> Iterator[str]:
        """Stream every replica's current pod, and each replacement pod as the Job creates it,
        until the run ends and every stream is drained."""
        lines: queue.Queue = queue.Queue()
        followed: set[str] = set()
        live = [0]
        lock = threading.Lock()

        def reader(i: int, pod: str) -> None:
            try:
                for line in self.api.pod_log(self.ns, pod, container, follow=True):
                    lines.put(tag(i, line))
            except CxrError as e:
                lines.put(tag(i, f"(log of pod {pod} ended: {e})\n"))
            finally:
                with lock:
                    live[0] -= 1

        next_check = 0.0
        while True:
            if time.monotonic() >= next_check:
                for i, p in wanted(pods):
                    name = p["metadata"]["name"]
                    if name not in followed and pod_state(p) is not RunState.PENDING:
                        followed.add(name)
                        with lock:
                            live[0] += 1
                        threading.Thread(target=reader, args=(i, name), daemon=True).start()
                try:
                    done = self.status(run).done
                except CxrError:  # deleted (cancel, TTL): nothing more will come
                    done = True
                with lock:
                    idle = live[0] == 0
                if done and idle and lines.empty():
                    return
                pods = self.api.list_pods(self.ns, run_selector(run))
                next_check = time.monotonic() + self.poll_seconds
            try:
                yield lines.get(timeout=0.2)
            except queue.Empty:
                pass

    poll_seconds = 2.0

    # --- cancel ---------------------------------------------------------------------------------
    def cancel(self, run: str) -> JobStatus:
        """Delete the run's Job (or RayJob) with foreground propagation: its pods, and the Service
        it owns, go first. A finished run is deleted too (that frees its name) and keeps its state."""
        obj = self._find(run)
        st = self._status_of(obj)
        self.api.delete(obj["kind"], self.ns, run)
        if st.done:
            st.message = f"{st.message}; deleted".lstrip("; ")
            return st
        return JobStatus(run=run, state=RunState.CANCELLED, backend=self.name, kind=st.kind,
                         replicas=st.replicas, restarts=st.restarts,
                         message=f"cancelled: {obj['kind']} {self.ns}/{run} deleted with its pods",
                         started=st.started, finished=time.time(), extra={"namespace": self.ns})

    def wait(self, run: str, timeout: float | None = None, poll: float = 2.0) -> JobStatus:
        return super().wait(run, timeout, poll)


def _ray_order(pods: list[dict]) -> list[dict]:
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]

    def key(p):
        meta = p.get("metadata") or {}
        role = (meta.get("labels") or {}).get(ROLE_LABEL)
        return (RAY_ROLES.index(role) if role in RAY_ROLES else 3, meta.get("name") or "")
    return sorted(live, key=key)
