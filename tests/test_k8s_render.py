"""Kubernetes rendering: strict validation against the real Kubernetes 1.31+ schemas
(kubernetes-validate), the restricted Pod Security Standard, purity, and golden `--dry-run` files.

Golden files live in tests/golden/<kind>.yaml; after an intended change, regenerate them with
UPDATE_GOLDEN=1 python -m pytest tests/test_k8s_render.py and review the diff.
"""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from cxrjobs.backends.kubernetes import pss
from cxrjobs.backends.kubernetes.options import KubeOptions, Toleration
from cxrjobs.backends.kubernetes.render import pod_templates, render
from cxrjobs.cli import app
from cxrjobs.errors import ConfigError
from cxrjobs.jobs.registry import KINDS
from cxrjobs.jobs.resolve import resolve_job

GOLDEN = Path(__file__).parent / "golden"
K8S_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
# KubeRay's RayJob (ray.io/v1) as of v1.3: the spec fields we may set, and the required ones of
# the cluster spec's groups (written from ray-operator/apis/ray/v1/{rayjob,raycluster}_types.go).
RAYJOB_SPEC_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
                      "metadata", "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy",
                      "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources",
                      "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
                      "shutdownAfterJobFinishes", "suspend"}
RAYCLUSTER_FIELDS = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                     "autoscalerOptions", "headServiceAnnotations", "suspend"}
HEAD_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                 "template", "scaleStrategy", "suspend", "idleTimeoutSeconds"}

# One job per registered kind, for the golden files: kind -> JobSpec overrides.
CASES = {
    "nih-train": {"replicas": 2, "train": {"data": "datasets/nih-224", "epochs": 20, "threads": 2}},
    "train": {"replicas": 2, "train": {"data": "datasets/covid-224", "model": "resnext50"}},
    "transfer": {"replicas": 2, "train": {"data": "datasets/covid-224", "init_from": "nih-run",
                                          "freeze": "conv"}},
    "preprocess": {"replicas": 4, "preprocess": {"output": "datasets/nih-224", "spec": {
        "source": "store://raw/nih", "format": "nih", "size": 224}}},
    "evaluate": {"replicas": 2, "evaluate": {"run": "transfer-m1", "data": "datasets/covid-test2",
                                             "split": "all", "name": "test2"}},
}


def validate(obj: dict) -> None:
    """Strict (no unknown fields) validation; a RayJob's pod templates as core PodTemplates."""
    docs = [obj]
    if obj["kind"] == "RayJob":
        docs = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}"}, "template": t}
                for i, (_, t) in enumerate(pod_templates(obj))]
        check_rayjob_fields(obj)
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def check_rayjob_fields(obj: dict) -> None:
    assert obj["apiVersion"] == "ray.io/v1"
    spec = obj["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_FIELDS
    assert set(cluster["headGroupSpec"]) <= HEAD_FIELDS
    assert {"rayStartParams", "template"} <= set(cluster["headGroupSpec"])
    for g in cluster["workerGroupSpecs"]:
        assert set(g) <= WORKER_FIELDS
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(g)
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode")
    assert all(isinstance(v, str) for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
               for v in g["rayStartParams"].values())


def job_of(kind: str, name: str | None = None):
    return resolve_job(kind, None, {**copy.deepcopy(CASES[kind]), "name": name or f"golden-{kind}"})


OPTION_SETS = [
    KubeOptions(),
    KubeOptions(namespace="ml", image_repository="registry.example.com/cxr/", image_tag="1.2.3",
                cpu="3500m", cpu_limit="4", memory="12Gi", memory_limit="16Gi", gpus=1, shm_size="8Gi",
                node_selector={"nvidia.com/gpu.present": "true"},
                tolerations=[Toleration.parse("nvidia.com/gpu:NoSchedule"),
                             Toleration.parse("pool=batch:NoExecute")],
                service_account="cxrjobs-runner", config_map="store-cfg", secret="store-creds",
                ttl_seconds_after_finished=600, active_deadline_seconds=3600, image_pull_policy="Always"),
]


@pytest.mark.parametrize("opts", OPTION_SETS, ids=["defaults", "every-option"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_rendered_object_is_valid_and_restricted(kind, opts):
    objects = render(job_of(kind), opts)
    for obj in objects:
        validate(obj)
        assert pss.violations(obj) == [], obj["kind"]
        assert obj["metadata"]["namespace"] == opts.namespace
        labels = obj["metadata"]["labels"]
        assert labels["cxrjobs.io/run"] == f"golden-{kind}" and labels["app.kubernetes.io/component"] == kind


@pytest.mark.parametrize("opts", OPTION_SETS, ids=["defaults", "every-option"])
def test_rayjob_is_valid_and_restricted(ray_kind, opts):
    job = resolve_job(ray_kind, None, {"name": "tune-x", "replicas": 3, "backoff_limit": 1,
                                       "train": {"data": "datasets/x"}})
    [rj] = render(job, opts)
    validate(rj)
    assert pss.violations(rj) == []
    spec = rj["spec"]
    assert spec["entrypoint"] == "python -m cxrjobs.jobs.entrypoint"
    assert "CXRJOBS_RUN_ID: tune-x" in spec["runtimeEnvYAML"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 1
    assert spec["activeDeadlineSeconds"] == opts.active_deadline_seconds
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    for _, t in pod_templates(rj):
        c = t["spec"]["containers"][0]
        assert c["image"] == opts.image("cxrjobs-tune")
        assert c["envFrom"] == [{"configMapRef": {"name": opts.config_map}},
                                {"secretRef": {"name": opts.secret}}]
        assert {"name": "CXRJOBS_RUN_ID", "value": "tune-x"} in c["env"]


def test_training_job_semantics():
    opts = KubeOptions(namespace="ml", master_port=23456)
    job, svc = render(job_of("nih-train", "ddp-run"), opts)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 2 * 3  # replicas x group restarts
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["template"]["spec"]["subdomain"] == svc["metadata"]["name"] == "ddp-run"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "ddp-run-0.ddp-run" and env["MASTER_PORT"] == "23456"
    assert env["WORLD_SIZE"] == "2" and env["OMP_NUM_THREADS"] == "2"
    assert "JOB_COMPLETION_INDEX" not in env and "LOCAL_RANK" not in env  # the Job controller's
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"cxrjobs.io/run": "ddp-run"}
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm"} <= mounts
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]


def test_preprocess_job_has_no_rendezvous():
    [job] = render(job_of("preprocess"), KubeOptions())
    env = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "MASTER_ADDR" not in env and "WORLD_SIZE" in env
    assert "subdomain" not in job["spec"]["template"]["spec"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "cxrjobs-preprocess:0.1.0"


def test_render_is_pure_and_holds_no_secret(monkeypatch):
    job = job_of("nih-train")
    before = render(job, KubeOptions())
    for k, v in {"CXRJOBS_STORE": "s3://other/x", "CXRJOBS_S3_ENDPOINT": "h:1", "KUBECONFIG": "/nope",
                 "CXRJOBS_S3_SECRET_KEY": "super-secret-value", "CXRJOBS_S3_ACCESS_KEY": "AKIAXYZ",
                 "CXRJOBS_NAMESPACE": "elsewhere"}.items():
        monkeypatch.setenv(k, v)
    after = render(job, KubeOptions())
    assert after == before
    text = yaml.safe_dump_all(after)
    assert "super-secret-value" not in text and "AKIAXYZ" not in text and "s3://other" not in text


def test_bad_names_and_options_are_clear_errors():
    with pytest.raises(ConfigError, match="must start with a letter"):
        render(resolve_job("nih-train", None, {"name": "1run", "train": {"data": "d"}}), KubeOptions())
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        KubeOptions(memory="lots")
    with pytest.raises(ValueError, match="namespace"):
        KubeOptions(namespace="Bad_NS")


def test_pss_checker_catches_violations():
    """The checker itself: each broken rule is reported (so a clean result means something)."""
    [job] = render(job_of("preprocess"), KubeOptions())
    breakages = {
        "privileged": lambda p: p["containers"][0]["securityContext"].update(privileged=True),
        "allowPrivilegeEscalation": lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "runAsNonRoot": lambda p: (p["securityContext"].pop("runAsNonRoot"),
                                   p["containers"][0]["securityContext"].pop("runAsNonRoot")),
        "drop must include ALL": lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        "seccompProfile": lambda p: (p["securityContext"].pop("seccompProfile"),
                                     p["containers"][0]["securityContext"].pop("seccompProfile")),
        "hostPath": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda p: p.update(hostNetwork=True),
        "NET_BIND_SERVICE": lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "hostPort": lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
    }
    for words, breakage in breakages.items():
        broken = copy.deepcopy(job)
        breakage(broken["spec"]["template"]["spec"])
        found = pss.violations(broken)
        assert any(words in m for m in found), (words, found)


def _golden_text(kind: str) -> str:
    from cxrjobs.backends.kubernetes.backend import KubernetesBackend
    return KubernetesBackend(KubeOptions(namespace="cxr")).submit_dryrun(job_of(kind)).render_text()


def test_every_kind_has_a_golden_case():
    """A new indexed-job kind needs its case here (ray-job kinds are covered with a test kind)."""
    missing = {k for k, v in KINDS.items() if v.workload == "indexed-job"} - set(CASES)
    assert not missing, f"add a golden case to CASES for {sorted(missing)}"


def _check_golden(path: Path, text: str) -> None:
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs from the dry-run; if intended, rerun with UPDATE_GOLDEN=1"
    for obj in yaml.safe_load_all(text):  # the files themselves are valid manifests
        validate(obj)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_dry_run_matches_golden_file(kind):
    _check_golden(GOLDEN / f"{kind}.yaml", _golden_text(kind))


def test_rayjob_dry_run_matches_golden_file(ray_kind):
    from cxrjobs.backends.kubernetes.backend import KubernetesBackend
    job = resolve_job(ray_kind, None, {"name": "golden-ray-job", "replicas": 4, "train": {"data": "datasets/x"}})
    _check_golden(GOLDEN / "ray-job.yaml", KubernetesBackend(KubeOptions(namespace="cxr")).submit_dryrun(job).render_text())


def test_cli_dry_run_prints_the_golden_yaml(local_env):
    res = CliRunner().invoke(app, ["submit", "nih-train", "--backend", "kubernetes", "--dry-run",
                                   "--namespace", "cxr", "--name", "golden-nih-train", "--replicas", "2",
                                   "--data", "datasets/nih-224", "--epochs", "20", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert res.output == (GOLDEN / "nih-train.yaml").read_text()
    # and the local backend's dry-run stays the process list, as JSON
    res = CliRunner().invoke(app, ["submit", "nih-train", "--dry-run", "--data", "d", "--name", "loc"])
    assert res.exit_code == 0 and '"kind": "Process"' in res.output


def _modules_loaded_by(invocations: list[list[str]], modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running these CLI invocations."""
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cxrjobs.cli import app\n"
            f"for args in {invocations!r}:\n"
            "    r = CliRunner().invoke(app, args)\n    assert r.exit_code == 0, r.output\n"
            f"print(sorted(m for m in {modules!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


def test_cli_and_renderer_import_nothing_heavy():
    """--help and a Kubernetes dry-run load neither torch, pandas, Pillow nor the kubernetes
    client (start-up times themselves are measured in benchmarks/)."""
    assert _modules_loaded_by([["submit", "nih-train", "--dry-run", "--backend", "kubernetes", "--data", "d"]],
                              ("torch", "pandas", "PIL", "numpy", "kubernetes")) == []


def test_strict_validation_rejects_unknown_fields():
    [job] = render(job_of("preprocess"), KubeOptions())
    job["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="securityContxt"):
        validate(job)


def test_help_builds_no_job_spec_models():
    """`cxrjobs --help` stays fast: the API, the job specs (every kind's pydantic models) and the
    Kubernetes option models are imported by the command that runs, not by the CLI's import."""
    assert _modules_loaded_by([["--help"], ["submit", "--help"]],
                              ("cxrjobs.api", "cxrjobs.jobs.spec", "cxrjobs.specs.train", "cxrjobs.backends.base",
                               "cxrjobs.backends.kubernetes.options")) == []


@pytest.mark.parametrize("options, words", [
    ({"memory": "8Gi", "memory_limit": "4Gi"}, "memory request 8Gi is above its limit 4Gi"),
    ({"cpu": "4", "cpu_limit": "2"}, "cpu request 4 is above its limit 2"),
    ({"cpu": "1500m", "cpu_limit": "1"}, "cpu request 1500m is above its limit 1"),
    ({"node_selector": {"bad key!": "v"}}, "node_selector key 'bad key!' is not a label key"),
    ({"node_selector": {"a": "b=c"}}, "node_selector value 'b=c' of 'a' is not a label value"),
    ({"image_tag": "bad:tag"}, "image_tag 'bad:tag' is not an image tag"),
    ({"image_repository": "UPPER/x"}, "image_repository 'UPPER/x' is not an image repository"),
])
def test_options_the_api_server_would_refuse_are_refused_here(options, words):
    """Each of these rendered, and passed kubernetes-validate's schemas, but fails at the API
    server (a request above its limit, a malformed label or image reference)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words):
        KubeOptions(**options)


def test_options_within_the_rules_still_render():
    # a request above the default memory limit raises that limit; one the user gave is kept
    assert KubeOptions(memory="8Gi").memory_limit == "8Gi"
    assert KubeOptions(memory="1Gi").memory_limit == "4Gi"
    KubeOptions(cpu="500m", cpu_limit="1", memory="1024Mi", memory_limit="1Gi", image_tag="v1.2_rc-3",
                image_repository="registry.example.org:5000/team/", node_selector={"kubernetes.io/arch": "amd64", "gpu": ""})


def test_a_searchs_ray_head_gets_no_gpu_and_one_core():
    """The head runs the driver only (num-cpus 0): it took a GPU and the workers' CPU request."""
    job = resolve_job("tune", None, {"name": "gpu-search", "replicas": 3, "tune": {"job": "train", "train": {"data": "datasets/x"}}})
    objs = render(job, KubeOptions(gpus=1, cpu="4"))
    cluster = objs[0]["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head.get("limits", {}) and head["requests"]["cpu"] == "1"
    assert worker["limits"]["nvidia.com/gpu"] == "1" and worker["requests"]["cpu"] == "4"


def test_search_names_fit_kuberay_and_the_exported_best_run():
    """KubeRay takes RayJob names of at most 47 characters that start with a letter; NAME-best
    must also be a valid run name (52 at most). Both passed, and rendered a RayJob."""
    tune = {"job": "train", "train": {"data": "datasets/x"}}
    with pytest.raises(Exception, match="a search's name has at most 47 characters"):
        resolve_job("tune", None, {"name": "a" * 48, "tune": tune})
    assert resolve_job("tune", None, {"name": "a" * 47, "tune": tune}).name == "a" * 47
    with pytest.raises(ConfigError, match="on Kubernetes a search's name must start with a letter"):
        render(resolve_job("tune", None, {"name": "1tune", "tune": tune}), KubeOptions())
