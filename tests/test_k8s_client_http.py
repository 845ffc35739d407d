"""The real `kubernetes` client, as KubeApi drives it, against a recording HTTP stub.

No Kubernetes API server can run here, so this stub (a few canned JSON answers on 127.0.0.1) is
not one: it checks what the real client library SENDS for our calls (paths, label selectors,
the foreground propagation body, log streaming with follow) and that its answers come back as
dicts our backend reads. The backend's logic is tested against a richer fake in
test_k8s_backend.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client as k8s

from cxrjobs.backends.kubernetes.backend import KubernetesBackend
from cxrjobs.backends.kubernetes.client import KubeApi
from cxrjobs.backends.kubernetes.options import KubeOptions
from cxrjobs.backends.states import RunState
from cxrjobs.jobs.resolve import resolve_job

JOB_PATH = "/apis/batch/v1/namespaces/cxr/jobs"


class Stub(BaseHTTPRequestHandler):
    requests: list = []
    jobs: dict = {}

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, obj=None, text: str | None = None):
        body = text.encode() if text is not None else json.dumps(obj or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        url = urlparse(self.path)
        self.requests.append((self.command, url.path, parse_qs(url.query), body))
        return url, body

    def do_POST(self):
        url, sent = self._record()
        body = json.loads(json.dumps(sent))  # the recorded request stays as sent
        body["metadata"]["uid"] = f"uid-{body['kind'].lower()}"
        if url.path == JOB_PATH:
            self.jobs[body["metadata"]["name"]] = body
        self._send(201, body)

    def do_GET(self):
        url, _ = self._record()
        if url.path.startswith(JOB_PATH + "/"):
            name = url.path.rsplit("/", 1)[1]
            if name not in self.jobs:
                return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            job = dict(self.jobs[name], status={"active": 1, "startTime": "2026-01-01T00:00:00Z"})
            return self._send(200, job)
        if url.path.startswith("/apis/ray.io/v1/"):
            return self._send(404, {"kind": "Status", "code": 404})
        if url.path == "/api/v1/namespaces/cxr/pods":
            pod = {"metadata": {"name": "run-h-0-abc", "creationTimestamp": "2026-01-01T00:00:01Z",
                                "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
                                "labels": {"cxrjobs.io/run": "run-h"}},
                   "status": {"phase": "Running"}}
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})
        if url.path.endswith("/log"):
            return self._send(200, text="hello from rank 0\nsecond line\n")
        self._send(404, {"kind": "Status", "code": 404})

    def do_DELETE(self):
        self._record()
        self._send(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def stub():
    Stub.requests, Stub.jobs = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    cfg = k8s.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    cfg.proxy = None
    api = k8s.ApiClient(cfg)
    yield KubeApi(k8s.BatchV1Api(api), k8s.CoreV1Api(api), k8s.CustomObjectsApi(api), api.sanitize_for_serialization)
    server.shutdown()
    api.close()


def test_real_client_requests(stub, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    be = KubernetesBackend(KubeOptions(namespace="cxr"), api=stub)
    job = resolve_job("nih-train", None, {"name": "run-h", "replicas": 2, "train": {"data": "d"}})
    plan = be.submit_dryrun(job)
    st = be.schedule(plan)
    assert st.state is RunState.RUNNING and st.replicas == 2

    posts = [(p, b) for m, p, _, b in Stub.requests if m == "POST"]
    assert [p for p, _ in posts] == [JOB_PATH, "/api/v1/namespaces/cxr/services"]
    assert posts[0][1] == plan.objects[0]  # the exact dry-run object went over the wire
    assert posts[1][1]["metadata"]["ownerReferences"][0]["uid"] == "uid-job"

    assert list(be.logs("run-h", replica=0)) == ["hello from rank 0\n", "second line\n"]
    follow = [(q, p) for m, p, q, _ in Stub.requests if p.endswith("/log")]
    assert follow[-1][1] == "/api/v1/namespaces/cxr/pods/run-h-0-abc/log"
    assert follow[-1][0]["container"] == ["replica"]
    Stub.requests.clear()
    lines = []
    for line in stub.pod_log("cxr", "run-h-0-abc", "replica", follow=True):
        lines.append(line)
    assert lines == ["hello from rank 0\n", "second line\n"]
    assert Stub.requests[-1][2]["follow"] == ["true"]

    be.status("run-h")
    pods = [q for m, p, q, _ in Stub.requests if p == "/api/v1/namespaces/cxr/pods"]
    assert pods[-1]["labelSelector"] == ["cxrjobs.io/run=run-h"]

    assert be.cancel("run-h").state is RunState.CANCELLED
    deletes = [(p, b) for m, p, _, b in Stub.requests if m == "DELETE"]
    assert deletes == [(JOB_PATH + "/run-h", {"propagationPolicy": "Foreground"})]
