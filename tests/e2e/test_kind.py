"""The whole stack on a kind cluster, through the CLI only (`make e2e`).

Runs the steps of tests/e2e/e2e_plan.py in order (the list `make e2e-plan` prints), prints each
step's time, and checks what each step must show: the Helm install and upgrade (credentials
kept), preprocessing from MinIO, 2-replica DDP training that survives the deletion of a worker
pod by resuming from its checkpoint, Ray Tune as a KubeRay RayJob, evaluation, and the
collected artifacts. Teardown (helm uninstall, kind delete cluster) runs whatever happened.

Needs kind and a working Docker engine; it is skipped with that reason where they are missing
(this development machine refuses privileged containers and image pulls, so kind cannot run).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_plan  # noqa: E402
from e2e_plan import EPOCHS, HOST_ENV, OUT, ROOT, Step  # noqa: E402

TOOLS = ROOT / "tools"


def _which(name: str) -> str | None:
    local = TOOLS / name
    return str(local) if os.access(local, os.X_OK) else shutil.which(name)


def missing_prerequisites() -> str | None:
    """Why the e2e flow cannot run here, or None."""
    if _which("kind") is None:
        return ("kind is not installed (make tools/kind needs Go) and kind needs a Docker engine "
                "that can run privileged containers and pull kindest/node: run `make e2e` on such a "
                "machine, as .github/workflows/e2e.yml does")
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI: kind runs its nodes as Docker containers"
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the Docker engine does not answer `docker info` ({e})"
    if info.returncode != 0:
        return f"the Docker engine does not answer `docker info`: {info.stderr.strip()[-300:]}"
    for tool in ("helm", "kubectl"):
        if _which(tool) is None:
            return f"{tool} is missing: run `make tools`"
    return None


# --- checks, one per step that must show something -------------------------------------------

def _json(out: str) -> dict:
    """The last JSON object printed (the CLI may print progress lines before it)."""
    start = out.rfind("\n{")
    return json.loads(out[start + 1 if start >= 0 else out.index("{"):])


def _succeeded(out: str, ctx: dict) -> None:
    st = _json(out)
    assert st["state"] == "Succeeded", f"run {st.get('run')} ended {st['state']}: {st.get('message')}"


def _digest(out: str, ctx: dict) -> None:
    ctx.setdefault("digests", []).append(hashlib.sha256(out.encode()).hexdigest())
    assert out.strip(), "the Secret cxrjobs-s3 has no data"


def _same_digest(out: str, ctx: dict) -> None:
    _digest(out, ctx)
    before, after = ctx["digests"][-2:]
    assert before == after, "helm upgrade replaced the generated S3 credentials"


class TooLate(Exception):
    """The step's moment has passed: polling again cannot help."""


def _mid_training(out: str, ctx: dict) -> None:
    st = _json(out)
    if st["state"] in ("Succeeded", "Failed", "Cancelled") or st.get("epoch", 0) >= EPOCHS:
        raise TooLate(f"training ended ({st['state']}, epoch {st.get('epoch')}) before a worker pod "
                      f"could be deleted: give it more data or epochs in tests/e2e/e2e_plan.py")
    assert st["state"] == "Running" and st.get("epoch", 0) >= 1, \
        f"not yet mid-training: {st['state']}, epoch {st.get('epoch')}"


def _deleted(out: str, ctx: dict) -> None:
    assert "deleted" in out, f"no pod of replica 1 was deleted: {out!r}"


def _train_finished(out: str, ctx: dict) -> None:
    st = _json(out)
    assert st["state"] == "Succeeded", f"training ended {st['state']}: {st.get('message')}"
    assert st["epoch"] == EPOCHS, f"training stopped at epoch {st['epoch']} of {EPOCHS}"


def _resumed(out: str, ctx: dict) -> None:
    m = re.search(r"resumed from checkpoint: (\d+) of (\d+) epochs done", out)
    assert m, "replica 0's log shows no resume from the checkpoint after the worker pod was deleted"
    assert 1 <= int(m.group(1)) < EPOCHS, f"resumed at epoch {m.group(1)}: nothing was checkpointed"


def _rayjob(out: str, ctx: dict) -> None:
    assert out.strip().startswith("rayjob"), f"no RayJob labelled cxrjobs.io/run=e2e-tune: {out!r}"


def _collected(out: str, ctx: dict) -> None:
    run = ROOT / OUT / "collect" / "e2e-nih"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1)), \
        f"metrics.jsonl holds epochs {[m['epoch'] for m in metrics]}, expected 1..{EPOCHS}"
    result = json.loads((run / "artifacts" / "result.json").read_text())
    text = json.dumps(result)
    assert '"ci"' in text and '"patients"' in text, f"the test result lacks CIs or counts: {text[:300]}"
    ev = json.loads((run / "eval" / "test1" / "results.json").read_text())
    assert ev["split"] == "test" and ev["n_images"] > 0 and ev["n_patients"] > 0, ev
    assert list((run / "eval" / "test1").glob("*.png")), "no evaluation plots were collected"


def _collected_tune(out: str, ctx: dict) -> None:
    files = [p for p in (ROOT / OUT / "collect" / "e2e-tune").rglob("*") if p.is_file()]
    assert any("trial" in p.name for p in files), f"no trial table among {[p.name for p in files]}"


CHECKS = {
    "secret-before-upgrade": _digest, "secret-after-upgrade": _same_digest,
    "preprocess": _succeeded, "wait-epoch": _mid_training, "delete-worker": _deleted,
    "train-finished": _train_finished, "train-resumed": _resumed, "tune": _succeeded,
    "tune-rayjob": _rayjob, "evaluate": _succeeded, "collect": _collected,
    "collect-tune": _collected_tune,
}


# --- the runner ------------------------------------------------------------------------------

def _argv(step: Step) -> list[str]:
    if step.argv[0] == "cxrjobs":
        return [sys.executable, "-m", "cxrjobs.cli", *step.argv[1:]]
    return [_which(step.argv[0]) or step.argv[0], *step.argv[1:]]


def _run(step: Step, env: dict, quiet: bool = False) -> str:
    """Run a step; return its stdout (shown unless the output is secret or `quiet`)."""
    secret = bool(step.secret_env or step.digest) or quiet
    proc = subprocess.run(_argv(step), cwd=ROOT, env=env, text=True, timeout=step.timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not secret:
        sys.stdout.write(proc.stdout[-4000:])
    if not quiet or proc.returncode:
        sys.stdout.write(proc.stderr[-4000:])
    assert proc.returncode == 0, f"step {step.name} exited {proc.returncode}"
    return proc.stdout


def diagnose(env: dict) -> None:
    """On failure, before teardown deletes the cluster: what the namespace holds, and job logs."""
    ns = e2e_plan.NAMESPACE
    for argv in (["kubectl", "get", "all,pvc,rayjobs.ray.io,networkpolicies", "-n", ns, "-o", "wide"],
                 ["kubectl", "get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
                 ["kubectl", "logs", "-n", ns, "-l", "app.kubernetes.io/name=cxrjobs",
                  "--all-containers", "--prefix", "--tail=100"]):
        try:
            proc = subprocess.run([_which(argv[0]) or argv[0], *argv[1:]], env=env, text=True,
                                  capture_output=True, timeout=60)
            print(f"\n$ {' '.join(argv)}\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}", flush=True)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"{' '.join(argv)}: {e}", flush=True)


def execute(steps: list[Step]) -> None:
    env = {**os.environ, **HOST_ENV, "PATH": f"{TOOLS}{os.pathsep}{os.environ['PATH']}",
           "KUBECONFIG": str(ROOT / HOST_ENV["KUBECONFIG"])}
    env.setdefault("NO_PROXY", "127.0.0.1,localhost")
    (ROOT / OUT).mkdir(exist_ok=True)
    ctx: dict = {}
    background: dict[str, tuple[subprocess.Popen, Step]] = {}
    main = [s for s in steps if not s.always]
    teardown = [s for s in steps if s.always]
    t_all = time.monotonic()
    try:
        for i, step in enumerate(main, 1):
            t0 = time.monotonic()
            print(f"\n=== [{i}/{len(steps)}] {step.name}: {step.why}", flush=True)
            check = CHECKS.get(step.name)
            if step.background:
                background[step.name] = (subprocess.Popen(_argv(step), cwd=ROOT, env=env, text=True,
                                                          stdout=subprocess.PIPE), step)
            elif step.join:
                proc, started = background.pop(step.join)
                out, _ = proc.communicate(timeout=step.timeout)
                sys.stdout.write(out[-4000:])
                assert proc.returncode == 0, f"step {started.name} exited {proc.returncode}"
                check(out, ctx)
            elif step.poll:
                deadline = time.monotonic() + step.timeout
                while True:
                    try:
                        out = _run(step, env, quiet=True)
                        check(out, ctx)
                        sys.stdout.write(out[-2000:])
                        break
                    except AssertionError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(step.every)
            else:
                out = _run(step, env)
                if step.secret_env:
                    env[step.secret_env] = base64.b64decode(out.strip()).decode()
                if check:
                    check(out, ctx)
            print(f"=== {step.name}: {time.monotonic() - t0:.1f} s", flush=True)
    except BaseException:
        diagnose(env)
        raise
    finally:
        for proc, _ in background.values():
            proc.kill()
            proc.wait()
        for step in teardown:
            t0 = time.monotonic()
            print(f"\n=== [teardown] {step.name}", flush=True)
            try:
                _run(step, env)
            except (AssertionError, subprocess.TimeoutExpired) as e:
                print(f"teardown step {step.name} failed: {e}", flush=True)
            print(f"=== {step.name}: {time.monotonic() - t0:.1f} s", flush=True)
        print(f"\ne2e total: {time.monotonic() - t_all:.1f} s", flush=True)


@pytest.mark.e2e
@pytest.mark.timeout(4 * 3600)
def test_paper_pipeline_on_kind():
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    execute(e2e_plan.plan())
