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
from cxrjobs.errors import ConfigError, CxrError
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


# --- what the API server or KubeRay would refuse is refused at submit -----------------------

TUNE = ["submit", "tune", "--job", "train", "--data", "datasets/x", "--backend", "kubernetes", "--dry-run"]


def _refused(args: list[str]) -> str:
    """The message of the CxrError a CLI invocation ends with (`main` prints it as `error: ...`
    and exits 2); nothing was rendered."""
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, CxrError), (res.output, res.exception)
    assert "RayJob" not in res.output
    return str(res.exception)


@pytest.mark.parametrize("args, field, words", [
    (["--memory", "8Gi", "--memory-limit", "4Gi"], "memory_limit",
     "--memory-limit 4Gi is below the --memory request 8Gi"),
    (["--cpu", "4", "--cpu-limit", "2"], "cpu_limit", "--cpu-limit 2 is below the --cpu request 4"),
    (["--cpu", "1500m", "--cpu-limit", "1"], "cpu_limit", "--cpu-limit 1 is below the --cpu request 1500m"),
    (["--memory", "1.5Gi", "--memory-limit", "1500Mi"], "memory_limit", "--memory-limit 1500Mi is below"),
    (["--cpu", "4GB"], "cpu", "--cpu '4GB' is not a Kubernetes quantity"),
    (["--memory", "-1Gi"], "memory", "--memory '-1Gi' is not a Kubernetes quantity"),
    (["--node-selector", "bad key!=v"], "node_selector",
     "--node-selector bad key!=v: 'bad key!' is not a Kubernetes label key"),
    (["--node-selector", "a=b=c"], "node_selector",
     "--node-selector a=b=c: the value 'b=c' of 'a' is not a Kubernetes label value"),
    (["--node-selector", "/x=y"], "node_selector", "'/x' is not a Kubernetes label key"),
    (["--node-selector", "a..b/x=y"], "node_selector", "'a..b/x' is not a Kubernetes label key"),
    (["--node-selector", "a/b/c=y"], "node_selector", "'a/b/c' is not a Kubernetes label key"),
    (["--node-selector", f"k={'v' * 64}"], "node_selector", "is not a Kubernetes label value"),
    (["--image-tag", "bad:tag"], "image_tag", "--image-tag 'bad:tag' is not an image tag"),
    (["--image-repository", "UPPER/x"], "image_repository", "--image-repository 'UPPER/x' is not an image repository"),
    (["--image-repository", "reg.example.com/cxr:1.0"], "image_repository", "is not an image repository"),
    (["--toleration", "bad key!:NoSchedule"], "(spec)", "--toleration: 'bad key!' is not a Kubernetes label key"),
    (["--toleration", "=v:NoSchedule"], "(spec)", "--toleration: a toleration without a key"),
])
def test_options_the_api_server_would_refuse_are_refused_at_submit(local_env, args, field, words):
    """Each of these rendered (and passed kubernetes-validate's schemas: they are strings there)
    but the API server refuses the pod: a request above its limit, a malformed label key or
    value, an image reference no kubelet can pull. The error names the field and the flag."""
    msg = _refused([*TUNE, "--name", "tune-x", *args])
    assert msg.startswith("invalid Kubernetes options:") and f"\n  {field}: " in msg and words in msg, msg


def test_options_within_the_rules_still_render():
    # a request above the default memory limit raises that limit; one the user gave is kept
    assert KubeOptions(memory="8Gi").memory_limit == "8Gi"
    assert KubeOptions(memory="1Gi").memory_limit == "4Gi"
    # Kubernetes' whole quantity grammar (.5, 1e3, n/u/E/Ei suffixes), equal request and limit in
    # other units, qualified label keys, empty label values, registry ports, '__' and '--'.
    opts = KubeOptions(cpu=".5", cpu_limit="500m", memory="1536Mi", memory_limit="1.5Gi", shm_size="1e9",
                       image_tag="v1.2_rc-3", image_repository="localhost:5000/my__team/a--b/",
                       node_selector={"kubernetes.io/arch": "amd64", "gpu": "", "a.b-c.example/x_y.Z": "V-1.2_x"},
                       tolerations=[Toleration.parse("nvidia.com/gpu:NoSchedule"), Toleration.parse(":NoExecute"),
                                    Toleration.parse("pool=")])
    assert opts.image("cxrjobs-tune") == "localhost:5000/my__team/a--b/cxrjobs-tune:v1.2_rc-3"
    for obj in render(job_of("nih-train"), opts):
        validate(obj)


def test_quantities_compare_exactly_across_units():
    from cxrjobs.backends.kubernetes.options import quantity_value

    assert quantity_value("1") == quantity_value("1000m") == quantity_value("1e0") == quantity_value("1.")
    assert quantity_value(".5") == quantity_value("500m") == quantity_value("500000u") == quantity_value("5e-1")
    assert quantity_value("1Gi") == 2**30 == quantity_value("1024Mi") and quantity_value("1G") == 10**9
    assert quantity_value("1.5Gi") > quantity_value("1500Mi") and quantity_value("2Ei") == 2**61
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity_value("4GB")


def test_a_searchs_ray_head_gets_modest_resources_of_its_own():
    """The head runs Ray's services and the driver only (num-cpus 0): it took a GPU and the
    workers' CPU and memory requests (and limits)."""
    job = resolve_job("tune", None, {"name": "gpu-search", "replicas": 3, "tune": {"job": "train", "train": {"data": "datasets/x"}}})

    def resources(opts):
        cluster = render(job, opts)[0]["spec"]["rayClusterSpec"]
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
        worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]
        return head, worker

    head, worker = resources(KubeOptions(gpus=1, cpu="4", cpu_limit="8", memory="16Gi", memory_limit="32Gi"))
    assert head == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "4Gi"}}
    assert worker == {"requests": {"cpu": "4", "memory": "16Gi"},
                      "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}}
    # workers smaller than a default pod: the head takes no more than they do (so it fits where
    # they fit, and its requests stay within its limits)
    head, worker = resources(KubeOptions(gpus=1, cpu="250m", cpu_limit="500m", memory="512Mi", memory_limit="1Gi"))
    assert head == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}}
    assert worker["limits"]["nvidia.com/gpu"] == "1"


def test_tune_gpu_dry_run_matches_golden_file(local_env):
    """The reported case through the CLI: three GPU workers with 4 CPUs each, a head without GPU."""
    res = CliRunner().invoke(app, [*TUNE, "--replicas", "3", "--gpus", "1", "--cpu", "4", "--namespace", "cxr",
                                   "--name", "golden-tune-gpu"])
    assert res.exit_code == 0, res.output
    _check_golden(GOLDEN / "tune-gpu.yaml", res.output)
    [rj] = [o for o in yaml.safe_load_all(res.output) if o]
    head = rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}}


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_search_names_fit_kuberay_and_the_exported_best_run_on_every_backend(local_env, backend):
    """KubeRay takes RayJob names of at most 47 characters; NAME-best must be a valid run name
    (52 at most). A 48..52-character search name passed and rendered a RayJob (locally, its best
    run would have been truncated to another name)."""
    from cxrjobs.jobs.spec import best_run_id

    args = ["submit", "tune", "--job", "train", "--data", "datasets/x", "--backend", backend, "--dry-run"]
    for n in (48, 52):
        msg = _refused([*args, "--name", "a" * n])
        assert "\n  name: " in msg and f"has {n} characters; a search's name has at most 47" in msg, msg
        assert "KubeRay takes RayJob names of at most 47" in msg and "NAME-best, within the 52" in msg
    res = CliRunner().invoke(app, [*args, "--name", "a" * 47])
    assert res.exit_code == 0, res.output
    assert best_run_id("a" * 47) == "a" * 47 + "-best"  # whole, 52 characters
    # other kinds keep the 52 of any run name
    assert resolve_job("train", None, {"name": "a" * 52, "train": {"data": "d"}}).name == "a" * 52


def test_search_names_start_with_a_letter_on_kubernetes(local_env):
    """KubeRay takes DNS-1035 names only; a local search may start with a digit (as any run)."""
    assert "must start with a letter" in _refused([*TUNE, "--name", "1tune"])
    res = CliRunner().invoke(app, ["submit", "tune", "--job", "train", "--data", "datasets/x", "--dry-run",
                                   "--name", "1tune"])
    assert res.exit_code == 0, res.output


def test_every_rayjob_kind_has_the_search_name_limit(ray_kind):
    with pytest.raises(Exception, match="a search's name has at most 47"):
        resolve_job(ray_kind, None, {"name": "a" * 48, "train": {"data": "d"}})
