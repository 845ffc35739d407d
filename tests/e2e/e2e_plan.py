"""The one list of commands `make e2e` runs: a kind cluster, the images, KubeRay and the
cxrjobs-stack chart, then the paper's pipeline through the CLI only, then teardown.

`make e2e-plan` prints it (`python tests/e2e/e2e_plan.py`); tests/e2e/test_kind.py executes
it step by step and runs each step's check. Standard library only, so printing the plan needs
no virtual environment.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "cxrjobs-e2e"
NAMESPACE = "cxrjobs-e2e"
RELEASE = "cxrjobs"
OUT = "e2e-out"                       # relative to the repository root (gitignored)
KUBECONFIG = f"{OUT}/kubeconfig"      # kind writes here; nothing touches ~/.kube/config
KUBERAY_VERSION = "1.5.1"             # = charts/cxrjobs-stack values kuberay.version
NODE_PORT = 30900                     # = k8s/kind-values.yaml, published by k8s/kind-config.yaml
EPOCHS = 6                            # long enough to delete a pod mid-run
IMAGES = ("cxrjobs-train", "cxrjobs-preprocess", "cxrjobs-tune")

# What the CLI on the host reads; credentials are added at run time from the cluster's Secret.
HOST_ENV = {
    "KUBECONFIG": KUBECONFIG,
    "CXRJOBS_STORE": "s3://cxrjobs",
    "CXRJOBS_S3_ENDPOINT": f"127.0.0.1:{NODE_PORT}",
    "CXRJOBS_S3_SECURE": "0",
}


def package_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'(?m)^version\s*=\s*"([^"]+)"', text).group(1)


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    why: str
    # "background": starts and runs on while the next steps run; a later step names it in `join`.
    background: bool = False
    join: str = ""
    # Poll: rerun every `every` seconds until the step's check passes (at most `timeout`).
    poll: bool = False
    every: float = 5.0
    timeout: float = 900.0
    # Capture stdout (base64) into this environment variable, never printing it.
    secret_env: str = ""
    # Output holds secrets: only its sha256 is kept (and printed by the plan: `| sha256sum`).
    digest: bool = False
    # Runs during teardown too, whatever failed before.
    always: bool = False
    env: dict = field(default_factory=dict)


def _cli(*args: str) -> tuple[str, ...]:
    return ("cxrjobs", *args)


def _k8s(*args: str) -> tuple[str, ...]:
    return (*args, "--backend", "kubernetes", "--namespace", NAMESPACE)


def plan() -> list[Step]:
    version = package_version()
    images = [f"{name}:{version}" for name in IMAGES]
    secret = ("kubectl", "-n", NAMESPACE, "get", "secret", "cxrjobs-s3", "-o")
    stack = ("charts/cxrjobs-stack", "--namespace", NAMESPACE, "-f", "k8s/kind-values.yaml",
             "--wait", "--timeout", "10m")
    return [
        Step("create-cluster", ("kind", "create", "cluster", "--name", CLUSTER, "--config",
                                "k8s/kind-config.yaml", "--kubeconfig", KUBECONFIG, "--wait", "180s"),
             "1 control plane + 2 workers; MinIO's NodePort published on 127.0.0.1", timeout=600),
        Step("build-images", ("make", "images"), f"build {', '.join(images)}", timeout=1800),
        Step("load-images", ("kind", "load", "docker-image", *images, "--name", CLUSTER),
             "copy the images into every node (no registry)", timeout=900),
        Step("kuberay-repo", ("helm", "repo", "add", "kuberay",
                              "https://ray-project.github.io/kuberay-helm/", "--force-update"),
             "the KubeRay operator's own chart repository"),
        Step("install-kuberay", ("helm", "install", "kuberay-operator", "kuberay/kuberay-operator",
                                 "--version", KUBERAY_VERSION, "--namespace", "ray-system",
                                 "--create-namespace", "--wait", "--timeout", "5m"),
             f"KubeRay {KUBERAY_VERSION}: the ray.io/v1 RayJob API", timeout=600),
        Step("wait-kuberay", ("kubectl", "-n", "ray-system", "rollout", "status",
                              "deployment/kuberay-operator", "--timeout", "300s"),
             "the operator is available and serves rayjobs.ray.io", timeout=600),
        Step("install-stack", ("helm", "install", RELEASE, *stack, "--create-namespace"),
             "MinIO, ConfigMap, Secret, RBAC, NetworkPolicy; the bucket hook Job must succeed",
             timeout=900),
        Step("wait-minio", ("kubectl", "-n", NAMESPACE, "rollout", "status",
                            "statefulset/cxrjobs-minio", "--timeout", "300s"),
             "MinIO is ready", timeout=600),
        Step("secret-before-upgrade", (*secret, "jsonpath={.data}"),
             "digest of the generated S3 credentials (the values are never printed)", digest=True),
        Step("upgrade-stack", ("helm", "upgrade", RELEASE, *stack),
             "an upgrade with the same values", timeout=900),
        Step("secret-after-upgrade", (*secret, "jsonpath={.data}"),
             "the credentials are the same after the upgrade (generated once, then looked up)",
             digest=True),
        Step("access-key", (*secret, "jsonpath={.data.CXRJOBS_S3_ACCESS_KEY}"),
             "the CLI's S3 credentials, from the Secret into the environment only",
             secret_env="CXRJOBS_S3_ACCESS_KEY"),
        Step("secret-key", (*secret, "jsonpath={.data.CXRJOBS_S3_SECRET_KEY}"),
             "the CLI's S3 credentials, from the Secret into the environment only",
             secret_env="CXRJOBS_S3_SECRET_KEY"),
        Step("synth-data", _cli("data", "synth", "nih", "--out", f"{OUT}/phantom-nih",
                                "--count", "1500", "--size", "128"),
             "phantom NIH data (synthetic images with class-dependent patterns)"),
        Step("upload-data", _cli("data", "upload", f"{OUT}/phantom-nih", "--name", "raw/phantom-nih"),
             "raw data into MinIO through the NodePort"),
        Step("preprocess", _cli(*_k8s("submit", "preprocess", "store://raw/phantom-nih",
                                      "--format", "nih", "--size", "128", "--replicas", "2",
                                      "--output", "datasets/phantom-128", "--name", "e2e-prep",
                                      "--wait", "--json")),
             "an Indexed Job of 2 slices reads raw/ from MinIO and writes shards; Succeeded",
             timeout=1200),
        Step("train", _cli(*_k8s("submit", "nih-train", "--replicas", "2", "--data",
                                 "datasets/phantom-128", "--model", "smallcnn", "--epochs", str(EPOCHS),
                                 "--batch-size", "64", "--name", "e2e-nih", "--wait", "--json")),
             "2-replica DDP over gloo as an Indexed Job + headless Service (runs on while the "
             "next steps disturb it)", background=True, timeout=2400),
        Step("wait-epoch", _cli(*_k8s("status", "e2e-nih", "--json")),
             "mid-training: at least one epoch checkpointed, the run still running", poll=True,
             every=2, timeout=1500),
        Step("delete-worker", ("kubectl", "-n", NAMESPACE, "delete", "pod", "-l",
                               "cxrjobs.io/run=e2e-nih,batch.kubernetes.io/job-completion-index=1",
                               "--wait=false"),
             "kill replica 1's pod mid-training"),
        Step("train-finished", (), "the training run ends Succeeded with every epoch",
             join="train", timeout=2400),
        Step("train-resumed", _cli(*_k8s("logs", "e2e-nih", "--replica", "0")),
             "replica 0 resumed from the checkpoint instead of starting over"),
        Step("tune", _cli(*_k8s("submit", "tune", "--job", "nih-train", "--data", "datasets/phantom-128",
                                "--model", "smallcnn", "--trials", "2", "--epochs-per-trial", "2",
                                "--perturbation-interval", "1", "--replicas", "1",
                                "--name", "e2e-tune", "--wait", "--json")),
             "PBT with 2 trials as a KubeRay RayJob (1 Ray worker pod); Succeeded", timeout=2400),
        Step("tune-rayjob", ("kubectl", "-n", NAMESPACE, "get", "rayjobs.ray.io", "-l",
                             "cxrjobs.io/run=e2e-tune", "-o", "name"),
             "the search ran as a RayJob"),
        Step("evaluate", _cli(*_k8s("submit", "evaluate", "e2e-nih", "--data", "datasets/phantom-128",
                                    "--split", "test", "--as", "test1", "--name", "e2e-eval",
                                    "--wait", "--json")),
             "scores the trained run on its test split; Succeeded", timeout=1200),
        Step("collect", _cli("collect", "e2e-nih", "-o", f"{OUT}/collect/e2e-nih"),
             "metrics (every epoch), the test result with CIs, evaluation results and plots"),
        Step("collect-tune", _cli("collect", "e2e-tune", "-o", f"{OUT}/collect/e2e-tune"),
             "the trial table of the search"),
        Step("uninstall-stack", ("helm", "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"),
             "remove the stack", always=True, timeout=600),
        Step("uninstall-kuberay", ("helm", "uninstall", "kuberay-operator", "--namespace",
                                   "ray-system", "--wait"), "remove KubeRay", always=True, timeout=600),
        Step("delete-cluster", ("kind", "delete", "cluster", "--name", CLUSTER, "--kubeconfig", KUBECONFIG),
             "remove the cluster", always=True, timeout=600),
    ]


def render(steps: list[Step]) -> str:
    """The plan as a shell script a person could follow (what `make e2e-plan` prints)."""
    lines = ["# `make e2e` runs these commands in this order (tests/e2e/test_kind.py executes this",
             "# same list and checks each step). `cxrjobs` is this checkout's CLI; helm, kubectl and",
             "# kind come from tools/ (`make tools`, `make tools/kind`). Each step prints its time.",
             "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in HOST_ENV.items())]
    for i, s in enumerate(steps, 1):
        lines.append(f"# {i}. {s.name}: {s.why}" + (" [also on failure]" if s.always else ""))
        cmd = shlex.join(s.argv)
        if s.join:
            lines.append(f"wait $STEP_{s.join.replace('-', '_').upper()}_PID")
        elif s.secret_env:
            lines.append(f'export {s.secret_env}="$({cmd} | base64 -d)"')
        elif s.digest:
            lines.append(f"{cmd} | sha256sum")
        elif s.background:
            lines.append(f"{cmd} & STEP_{s.name.replace('-', '_').upper()}_PID=$!")
        elif s.poll:
            lines.append(f"until {cmd}  # check passes; every {s.every:g} s, at most {s.timeout:g} s")
            lines.append(f"do sleep {s.every:g}; done")
        else:
            lines.append(cmd)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(plan()), end="")
