"""The Kubernetes backend's submit / status / logs / cancel / list logic.

No Kubernetes API server can run here (no kind, no control plane), so these tests drive the
backend's real code (backend.py and client.py over the `kubernetes` client's API signatures and
ApiException) against a FAKE of the client API (tests/fake_kube.py), with the test playing the
Job controller. Rendering itself is checked against the real Kubernetes schemas in
test_k8s_render.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes.client.exceptions import ApiException

from cxrjobs import api
from cxrjobs.backends.kubernetes.backend import KubernetesBackend
from cxrjobs.backends.kubernetes.client import KubeApi
from cxrjobs.backends.kubernetes.options import KubeOptions
from cxrjobs.backends.states import RunState
from cxrjobs.errors import ConfigError, CxrError
from cxrjobs.jobs.resolve import resolve_job
from fake_kube import FakeCluster

NS = "cxr"


@pytest.fixture
def cluster():
    return FakeCluster()


@pytest.fixture
def backend(cluster):
    be = KubernetesBackend(KubeOptions(namespace=NS),
                           api=KubeApi(cluster.batch, cluster.core, cluster.custom, serializer=lambda o: o))
    be.poll_seconds = 0.05
    return be


def train_job(name="run-a", replicas=2, backoff=3):
    return resolve_job("nih-train", None, {"name": name, "replicas": replicas, "backoff_limit": backoff,
                                           "train": {"data": "datasets/nih-224"}})


def test_schedule_creates_exactly_the_dry_run_objects_and_the_job_owns_its_service(cluster, backend):
    plan = backend.submit_dryrun(train_job())
    st = backend.schedule(plan)
    assert st.state is RunState.PENDING and st.replicas == 2
    created = [c for c in cluster.calls if c[0].startswith("create_")]
    assert [c[0] for c in created] == ["create_namespaced_job", "create_namespaced_service"]
    job_body, svc_body = created[0][2], created[1][2]
    assert job_body == plan.objects[0]
    # The Service is the dry-run's plus exactly one thing: the reference to the created Job.
    owner = svc_body["metadata"].pop("ownerReferences")
    assert svc_body == plan.objects[1]
    uid = cluster.jobs[(NS, "run-a")]["metadata"]["uid"]
    assert owner == [{"apiVersion": "batch/v1", "kind": "Job", "name": "run-a", "uid": uid,
                      "controller": False, "blockOwnerDeletion": True}]
    assert "ownerReferences" not in plan.objects[1]["metadata"]  # the plan itself is untouched


def test_job_that_succeeds(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job()))
    p0 = cluster.start_pod(NS, "run-a", 0, log="rank 0 start\n")
    p1 = cluster.start_pod(NS, "run-a", 1, log="rank 1 start\n")
    st = backend.status("run-a")
    assert st.state is RunState.RUNNING
    assert [r["index"] for r in st.extra["pods"]] == [0, 1]
    cluster.write_log(NS, p0, "epoch 1 done\n")
    assert list(backend.logs("run-a", replica=0)) == ["rank 0 start\n", "epoch 1 done\n"]
    assert list(backend.logs("run-a")) == ["[replica 0] rank 0 start\n", "[replica 0] epoch 1 done\n",
                                           "[replica 1] rank 1 start\n"]
    cluster.end_pod(NS, p0, 0)
    cluster.end_pod(NS, p1, 0)
    cluster.set_condition(NS, "run-a", "SuccessCriteriaMet")
    cluster.set_condition(NS, "run-a", "Complete")
    st = backend.status("run-a")
    assert st.state is RunState.SUCCEEDED and st.done and st.finished is not None
    assert [s.run for s in backend.list()] == ["run-a"]


def test_follow_streams_every_replica_until_the_run_ends(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job()))
    p0 = cluster.start_pod(NS, "run-a", 0, log="a0\n")
    p1 = cluster.start_pod(NS, "run-a", 1, log="b0\n")
    got: list[str] = []

    def follow():
        got.extend(backend.logs("run-a", follow=True))

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.3)
    cluster.write_log(NS, p0, "a1 partial line is long enough to be chunked\n")
    cluster.write_log(NS, p1, "b1\n")
    time.sleep(0.3)
    cluster.end_pod(NS, p0, 0)
    cluster.end_pod(NS, p1, 0)
    cluster.set_condition(NS, "run-a", "Complete")
    t.join(timeout=10)
    assert not t.is_alive(), "logs -f did not return after the run ended"
    assert sorted(got) == sorted(["[replica 0] a0\n", "[replica 1] b0\n",
                                  "[replica 0] a1 partial line is long enough to be chunked\n",
                                  "[replica 1] b1\n"])


def test_exit_code_2_fails_the_job_at_once(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job()))
    rule = cluster.jobs[(NS, "run-a")]["spec"]["podFailurePolicy"]["rules"][0]
    assert rule == {"action": "FailJob", "onExitCodes": {"containerName": "replica", "operator": "In",
                                                          "values": [2]}}
    p0 = cluster.start_pod(NS, "run-a", 0)
    cluster.start_pod(NS, "run-a", 1)
    cluster.end_pod(NS, p0, 2)
    # What the Job controller does for a FailJob rule: FailureTarget at once, then Failed.
    cluster.set_condition(NS, "run-a", "FailureTarget", "PodFailurePolicy",
                          "Container replica for pod cxr/run-a-0 failed with exit code 2 matching FailJob rule at index 0")
    st = backend.status("run-a")
    assert st.state is RunState.FAILED
    assert "exit code 2" in st.message and "user error" in st.message


def test_deleted_pod_is_replaced_and_its_logs_are_skipped(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job()))
    p0 = cluster.start_pod(NS, "run-a", 0, log="first pod\n")
    cluster.start_pod(NS, "run-a", 1, log="peer\n")
    # A node drain evicts pod 0: DisruptionTarget, ignored by the podFailurePolicy (not counted).
    cluster.end_pod(NS, p0, 137, disruption=True)
    st = backend.status("run-a")
    assert st.state is RunState.RESTARTING and st.restarts == 0
    cluster.delete_pod(NS, p0)
    assert list(backend.logs("run-a", replica=0)) == []  # gone: no error, nothing to print
    new = cluster.start_pod(NS, "run-a", 0, log="second pod\n")
    st = backend.status("run-a")
    assert st.state is RunState.RUNNING
    assert {r["index"]: r["pod"] for r in st.extra["pods"]}[0] == new
    assert list(backend.logs("run-a", replica=0)) == ["second pod\n"]
    with pytest.raises(CxrError, match="replicas 0..1"):
        list(backend.logs("run-a", replica=5))


def test_crashed_replica_restarts_the_group_within_the_backoff_limit(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job(backoff=3)))
    assert cluster.jobs[(NS, "run-a")]["spec"]["backoffLimit"] == 6  # 2 replicas x 3 restarts
    p0, p1 = cluster.start_pod(NS, "run-a", 0), cluster.start_pod(NS, "run-a", 1)
    cluster.end_pod(NS, p1, 1)   # the crash
    cluster.end_pod(NS, p0, 1)   # its peer's next collective fails
    st = backend.status("run-a")
    assert st.state is RunState.RESTARTING and st.restarts == 2
    cluster.start_pod(NS, "run-a", 0)
    cluster.start_pod(NS, "run-a", 1)
    st = backend.status("run-a")
    assert st.state is RunState.RUNNING and "2 replica pod(s) failed" in st.message


def test_cancel_deletes_in_the_foreground_and_takes_the_service_along(cluster, backend):
    backend.schedule(backend.submit_dryrun(train_job()))
    cluster.start_pod(NS, "run-a", 0)
    st = backend.cancel("run-a")
    assert st.state is RunState.CANCELLED
    assert ("delete_namespaced_job", "run-a", NS, {"propagationPolicy": "Foreground"}) in cluster.calls
    assert backend.status("run-a").state is RunState.CANCELLED  # while its pods terminate
    cluster.gc(cluster.jobs, NS, "run-a")  # the garbage collector finishes the deletion
    assert not cluster.services and not cluster.pods
    with pytest.raises(CxrError, match="no run 'run-a' in namespace cxr"):
        backend.status("run-a")


def test_resubmit_and_failure_paths(cluster, backend):
    plan = backend.submit_dryrun(train_job())
    backend.schedule(plan)
    with pytest.raises(CxrError, match="already exists .*cancel it first"):
        backend.schedule(plan)
    cluster.set_condition(NS, "run-a", "Complete")
    with pytest.raises(CxrError, match="cancel run-a --backend kubernetes"):
        backend.schedule(plan)
    # A Service that cannot be created leaves no Job behind.
    other = backend.submit_dryrun(train_job("run-b"))
    cluster.fail_next["create_namespaced_service"] = ApiException(status=403, reason="Forbidden")
    with pytest.raises(CxrError, match="forbidden.*RBAC"):
        backend.schedule(other)
    assert ("delete_namespaced_job", "run-b", NS, {"propagationPolicy": "Foreground"}) in cluster.calls


def test_preprocess_is_an_indexed_job_without_service(cluster, backend):
    job = resolve_job("preprocess", None, {"name": "prep", "replicas": 3, "preprocess": {
        "output": "datasets/nih-224", "spec": {"source": "store://raw/nih", "format": "nih"}}})
    backend.schedule(backend.submit_dryrun(job))
    assert not cluster.services
    pods = [cluster.start_pod(NS, "prep", i) for i in range(3)]
    for p in pods:
        cluster.end_pod(NS, p, 0)
    cluster.set_condition(NS, "prep", "Complete")
    assert backend.status("prep").state is RunState.SUCCEEDED


def test_rayjob_submit_status_logs_cancel(cluster, backend, ray_kind):
    job = resolve_job(ray_kind, None, {"name": "tune-a", "replicas": 2, "train": {"data": "datasets/x"}})
    st = backend.schedule(backend.submit_dryrun(job))
    assert st.state is RunState.PENDING and st.replicas == 2
    assert [c[0] for c in cluster.calls if c[0].startswith("create")] == ["create_namespaced_custom_object"]
    rj = cluster.rayjobs[(NS, "tune-a")]
    rj["status"].update(jobDeploymentStatus="Running", jobStatus="RUNNING", rayClusterName="tune-a-raycluster")
    cluster.start_ray_pod(NS, "tune-a", "worker", 1, "w1\n")
    cluster.start_ray_pod(NS, "tune-a", "head", 0, "head\n")
    cluster.start_ray_pod(NS, "tune-a", "submitter", 0, "driver: trial 3 done\n")
    st = backend.status("tune-a")
    assert st.state is RunState.RUNNING and st.extra["ray_cluster"] == "tune-a-raycluster"
    assert list(backend.logs("tune-a", replica=0)) == ["driver: trial 3 done\n"]  # the submitter
    rj["status"].update(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert backend.status("tune-a").state is RunState.SUCCEEDED
    rj["status"].update(jobDeploymentStatus="Running", jobStatus="RUNNING")
    assert backend.cancel("tune-a").state is RunState.CANCELLED
    assert ("delete_namespaced_custom_object", NS, "tune-a", {"propagationPolicy": "Foreground"}) in cluster.calls


def test_missing_kuberay_is_a_clear_error(cluster, backend, ray_kind):
    job = resolve_job(ray_kind, None, {"name": "tune-b", "train": {"data": "datasets/x"}})
    cluster.fail_next["create_namespaced_custom_object"] = ApiException(status=404, reason="NotFound")
    with pytest.raises(CxrError, match="install the KubeRay operator"):
        backend.schedule(backend.submit_dryrun(job))


def test_kubernetes_backend_refuses_a_local_store(local_env):
    with pytest.raises(ConfigError, match="cannot read the local store"):
        api.submit(train_job(), "kubernetes", kube=KubeOptions(namespace=NS))


def test_submit_through_the_api_writes_the_spec_then_creates_the_job(cluster, backend, s3_env, monkeypatch):
    monkeypatch.setattr("cxrjobs.backends.kubernetes.client.connect", lambda: backend.api)
    kube = KubeOptions(namespace=NS)
    job = train_job("api-run")
    with pytest.raises(CxrError, match="ConfigMap cxr/cxrjobs-config not found"):
        api.submit(job, "kubernetes", kube=kube)
    cluster.config_maps[(NS, "cxrjobs-config")] = {"metadata": {"name": "cxrjobs-config"},
                                                   "data": {"CXRJOBS_STORE": "s3://elsewhere/x"}}
    with pytest.raises(CxrError, match="would not find it"):
        api.submit(job, "kubernetes", kube=kube)
    assert not cluster.jobs and not s3_env.exists("runs/api-run/spec.json")  # nothing half-done
    cluster.config_maps[(NS, "cxrjobs-config")]["data"]["CXRJOBS_STORE"] = s3_env.url + "/"
    with pytest.raises(CxrError, match="train.data: dataset 'datasets/nih-224' not found"):
        api.submit(job, "kubernetes", kube=kube)  # checked at submit, not in every pod
    s3_env.put_text("datasets/nih-224/manifest.json", '{"image_size": 224}')
    st = api.submit(job, "kubernetes", kube=kube)
    assert st.state is RunState.PENDING and (NS, "api-run") in cluster.jobs
    assert s3_env.exists("runs/api-run/spec.json")
    assert api.run_status("api-run", "kubernetes", kube)["state"] == "Pending"


def test_logs_of_a_run_gone_from_the_cluster_come_from_the_store(cluster, backend, local_env):
    """After ttlSecondsAfterFinished the Job and its pods are deleted; the entrypoint mirrored each
    replica's output into the store (test_logmirror.py), and `cxrjobs logs` reads it there."""
    from cxrjobs.jobs.logmirror import log_key

    with pytest.raises(CxrError, match="no run 'run-gone'"):  # nothing anywhere: the old error
        list(backend.logs("run-gone"))
    local_env.put_text(log_key("run-gone", 0), "=== attempt started ===\nepoch 1 of rank 0\n")
    local_env.put_text(log_key("run-gone", 1), "=== attempt started ===\nepoch 1 of rank 1\n")
    lines = list(backend.logs("run-gone"))
    assert "no longer in the cluster" in lines[0]
    assert lines[1:] == ["[replica 0] === attempt started ===\n", "[replica 0] epoch 1 of rank 0\n",
                         "[replica 1] === attempt started ===\n", "[replica 1] epoch 1 of rank 1\n"]
    assert list(backend.logs("run-gone", replica=1))[1:] == ["=== attempt started ===\n", "epoch 1 of rank 1\n"]
    # A Job that still exists is read from its pods, as before.
    backend.schedule(backend.submit_dryrun(train_job()))
    cluster.start_pod(NS, "run-a", 0, log="live\n")
    assert list(backend.logs("run-a", replica=0)) == ["live\n"]
