"""Build the cxrjobs container images, and what an offline build needs.

    python images/build.py build [--offline] [--targets preprocess,train,tune] [--repository R] [--json]
    python images/build.py base         # debootstrap bookworm + docker import -> the offline base image
    python images/build.py wheelhouse   # pip download every pinned requirement into images/wheelhouse/

Tags are <repository>cxrjobs-<target>:<version>, the version read from pyproject.toml.

`build` uses the official python:3.11-slim-bookworm base and the package indexes (PyPI and the
PyTorch CPU index). `build --offline` is for machines that reach no container registry and only
PyPI: the base image is made with debootstrap + `docker import`, and every wheel comes from a
wheelhouse filled on the host by `pip download` (the PyTorch CPU index being out of reach, torch is
the CPU build that this host's pip can find, OFFLINE_TORCH; images/README.md says why).
A Docker engine is needed: when none answers, dockerd is started (and docker.io installed with
apt-get when missing), then stopped again when the command ends. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "Dockerfile"
WHEELHOUSE = ROOT / "images" / "wheelhouse"
REQUIREMENTS = ROOT / "images" / "requirements"
TARGETS = ("preprocess", "train", "tune")
OFFLINE_BASE = "cxrjobs-base:bookworm-debootstrap"
# The CPU torch build reachable here (a wheel on this machine's pip find-links). No torchvision: the
# only ones reachable are PyPI's CUDA builds, whose compiled ops need CUDA torch libraries, and
# without them `import torchvision` fails. Offline images run the smallcnn models, not ResNeXt.
OFFLINE_TORCH = ("2.13.0+cpu", "")
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    if not m:
        raise SystemExit("pyproject.toml has no version = \"...\" line")
    return m.group(1)


def image_name(target: str, repository: str = "", tag: str | None = None) -> str:
    """As the Kubernetes backend names them (KubeOptions.image): [REPOSITORY/]cxrjobs-TARGET:TAG."""
    repo = repository.rstrip("/")
    return f"{repo + '/' if repo else ''}cxrjobs-{target}:{tag or version()}"


def sh(cmd: list[str], check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, text=True, capture_output=capture, **kw)
    if check and res.returncode != 0:
        out = ((res.stdout or "") + (res.stderr or ""))[-4000:] if capture else ""
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}\n{out}")
    return res


# --- tools and the engine ---------------------------------------------------------------------

def ensure_packages() -> None:
    """docker.io and debootstrap from Debian when missing (as root, like CI)."""
    missing = [pkg for pkg, exe in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
               if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"{', '.join(missing)} missing and not root: apt-get install -y {' '.join(missing)}")
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-q"], env=env)
    sh(["apt-get", "install", "-y", "-q", *missing], env=env)


def engine_up() -> bool:
    return sh(["docker", "info", "--format", "{{.ServerVersion}}"], check=False).returncode == 0


def start_dockerd(log_path: Path, timeout: float = 60) -> subprocess.Popen | None:
    """Start dockerd unless an engine answers already; returns the process this call started."""
    ensure_packages()
    if engine_up():
        return None
    if os.geteuid() != 0:
        raise RuntimeError("no Docker engine answers and dockerd needs root to start")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([shutil.which("dockerd") or "/usr/sbin/dockerd"], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not engine_up():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_dockerd(proc)
            raise RuntimeError(f"dockerd did not start within {timeout:g}s; its log: {log_path}\n"
                               + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.5)
    log(f"started dockerd (pid {proc.pid}, log {log_path})")
    return proc


def stop_dockerd(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def build_cli() -> tuple[list[str], dict]:
    """A BuildKit build when this host has one (builds only the stages a target needs): buildx,
    or a Docker 20.10 client (Debian's docker.io), which has BuildKit built in; else the legacy
    builder, which builds the same images but runs every earlier stage of the file too."""
    if sh(["docker", "buildx", "version"], check=False).returncode == 0:
        return ["docker", "buildx", "build", "--load"], {}
    for cli in ("docker", "/usr/bin/docker"):
        if shutil.which(cli):
            v = sh([cli, "version", "--format", "{{.Client.Version}}"], check=False).stdout.strip()
            if re.match(r"(1\d|20|21|22)\.", v):
                return [cli, "build"], {"DOCKER_BUILDKIT": "1"}
    return ["docker", "build"], {"DOCKER_BUILDKIT": "0"}


def image_size(ref: str) -> int:
    return int(sh(["docker", "image", "inspect", "--format", "{{.Size}}", ref]).stdout.strip())


def image_exists(ref: str) -> bool:
    return sh(["docker", "image", "inspect", ref], check=False).returncode == 0


# --- offline inputs ---------------------------------------------------------------------------

def offline_base(force: bool = False) -> str:
    """Debian bookworm with Python 3.11, pip and venv, from Debian's mirror, as a local image."""
    if image_exists(OFFLINE_BASE) and not force:
        return OFFLINE_BASE
    ensure_packages()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrjobs-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap bookworm into {rootfs} (about a minute)")
        sh(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates",
            "bookworm", str(rootfs), DEBIAN_MIRROR])
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / d).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh(["docker", "import", "-c", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["python3"]', "-", OFFLINE_BASE], stdin=tar.stdout)
        tar.wait()
    log(f"{OFFLINE_BASE}: {image_size(OFFLINE_BASE) / 1e6:.0f} MB in {time.perf_counter() - t0:.0f}s")
    return OFFLINE_BASE


def wheelhouse(torch: tuple[str, str] = OFFLINE_TORCH) -> Path:
    """Every pinned requirement of every image as a wheel in images/wheelhouse/ (pip download with
    this host's pip settings: PyPI plus whatever local wheel folders it is configured with)."""
    want = [f"torch=={torch[0]}", *([f"torchvision=={torch[1]}"] if torch[1] else [])]
    stamp = WHEELHOUSE / ".stamp"
    key = json.dumps([want, *(p.read_text() for p in sorted(REQUIREMENTS.glob("*.txt")))])
    if stamp.exists() and stamp.read_text() == key:
        return WHEELHOUSE
    log(f"pip download into {WHEELHOUSE} (every pinned requirement and {' '.join(want)})")
    sh([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(WHEELHOUSE),
        "-r", str(REQUIREMENTS / "tune.txt"), *want])
    stamp.write_text(key)
    return WHEELHOUSE


# --- building -----------------------------------------------------------------------------------

def build(targets=TARGETS, offline: bool = False, repository: str = "", base_image: str | None = None,
          build_args: dict | None = None, tag: str | None = None, no_cache: bool = False) -> list[dict]:
    """Build each target; returns [{target, image, seconds, bytes}]. Seconds include the engine's
    cache hits unless no_cache (every stage of that target rebuilt: its time from scratch, given
    the base image and the wheels or the package indexes)."""
    args = dict(build_args or {})
    args["VERSION"] = version()
    if offline:
        args.update(BASE_IMAGE=base_image or offline_base(), WHEELHOUSE="1",
                    TORCH_VERSION=OFFLINE_TORCH[0], TORCHVISION_VERSION=OFFLINE_TORCH[1])
        wheelhouse()
    elif base_image:
        args["BASE_IMAGE"] = base_image
    cli, env = build_cli()
    rows = []
    for target in targets:
        ref = image_name(target, repository, tag)
        cmd = [*cli, "-f", str(DOCKERFILE), "--target", target, "-t", ref, *(["--no-cache"] if no_cache else []),
               *(x for k, v in sorted(args.items()) for x in ("--build-arg", f"{k}={v}")), str(ROOT)]
        log(f"building {ref}")
        t0 = time.perf_counter()
        res = sh(cmd, check=False, env={**os.environ, **env})
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"building {ref} failed (exit {res.returncode}):\n"
                               + (res.stdout + res.stderr)[-6000:])
        rows.append({"target": target, "image": ref, "seconds": round(seconds, 1), "bytes": image_size(ref)})
        log(f"{ref}: {rows[-1]['bytes'] / 1e6:.0f} MB, built in {seconds:.0f}s")
    return rows


# --- running replicas as pods would run ---------------------------------------------------------

def _docker_size(quantity: str) -> str:
    """A Kubernetes quantity ("1Gi", "512Mi") as a docker size ("1g", "512m")."""
    m = re.fullmatch(r"(\d+)([KMGT])i?", quantity)
    if not m:
        raise ValueError(f"cannot express {quantity!r} as a docker size")
    return f"{m.group(1)}{m.group(2).lower()}"


def pod_flags(pod_spec: dict) -> list[str]:
    """`docker run` flags for a rendered pod spec's security settings and scratch volumes: read-only
    root, the user, dropped capabilities, no privilege escalation, emptyDirs as tmpfs mounts and
    the memory-backed /dev/shm as --shm-size. (RuntimeDefault seccomp is Docker's default.)"""
    c = pod_spec["containers"][0]
    sc, psc = c.get("securityContext", {}), pod_spec.get("securityContext", {})
    flags = []
    if sc.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    if uid is not None:
        flags += ["--user", f"{uid}:{sc.get('runAsGroup', psc.get('runAsGroup', uid))}"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        flags += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        empty = volumes[m["name"]].get("emptyDir")
        if empty is None:
            raise ValueError(f"volume {m['name']}: only emptyDir volumes are translated")
        if m["mountPath"] == "/dev/shm":
            flags += ["--shm-size", _docker_size(empty.get("sizeLimit", "64Mi"))]
        else:
            flags += ["--tmpfs", f"{m['mountPath']}:rw,exec,mode=1777"]
    return flags


def pod_run_command(pod_spec: dict, index: int, name: str, network: str, env_from: dict[str, str],
                    secret_names=(), aliases=(), volumes=()) -> list[str]:
    """`docker run` for replica `index` of a rendered Indexed Job pod template: its image,
    command, env, security settings and scratch volumes, JOB_COMPLETION_INDEX as the Job
    controller sets it, the ConfigMap's values as `env_from`, and the Secret's keys by name only
    (values from the caller's environment, so no command line holds them)."""
    c = pod_spec["containers"][0]
    env = {**env_from, **{e["name"]: e["value"] for e in c.get("env", []) if "value" in e},
           "JOB_COMPLETION_INDEX": str(index)}
    cmd = ["docker", "run", "--detach", "--name", name, "--hostname", name, "--network", network,
           *(x for a in aliases for x in ("--network-alias", a)), *pod_flags(pod_spec),
           *(x for v in volumes for x in ("--volume", v)),
           *(x for k, v in env.items() for x in ("--env", f"{k}={v}")),
           *(x for k in secret_names for x in ("--env", k))]
    command = c.get("command")
    if command:
        cmd += ["--entrypoint", command[0], c["image"], *command[1:]]
    else:
        cmd.append(c["image"])
    return cmd + list(c.get("args", []))


def network_create(name: str) -> str:
    """A user-defined bridge network (containers on it resolve each other by name); its gateway IP."""
    sh(["docker", "network", "create", "--driver", "bridge", name])
    return sh(["docker", "network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", name]).stdout.strip()


def network_remove(name: str) -> None:
    sh(["docker", "network", "rm", name], check=False)


def rendered_pod(job) -> tuple[dict, dict | None]:
    """The Kubernetes backend's rendering of a cxrjobs JobSpec (default KubeOptions: these
    images, uid 10001): (its Job's pod spec, its headless Service or None). Needs cxrjobs."""
    from cxrjobs.backends.kubernetes.options import KubeOptions
    from cxrjobs.backends.kubernetes.render import render

    objects = render(job, KubeOptions())
    job_obj = next(o for o in objects if o["kind"] == "Job")
    return job_obj["spec"]["template"]["spec"], next((o for o in objects if o["kind"] == "Service"), None)


def job_containers(job, network: str, volumes=()) -> list[list[str]]:
    """`docker run` commands for every pod of a job's rendered Indexed Job: container
    `<job>-<i>`, aliased `<job>-<i>.<service>` (the name the headless Service gives the pod, so
    the rendered MASTER_ADDR resolves), with the store settings the cxrjobs-config ConfigMap
    would hold (from this process's settings) and the S3 credentials by name."""
    from cxrjobs.config import SECRET_ENV, load_settings

    pod, service = rendered_pod(job)
    config_map = load_settings().job_env()
    svc = service["metadata"]["name"] if service else None
    return [pod_run_command(pod, i, f"{job.name}-{i}", network, config_map, SECRET_ENV,
                            [f"{job.name}-{i}.{svc}"] if svc else [], volumes)
            for i in range(job.replicas)]


def start_containers(commands: list[list[str]], secrets: dict | None = None) -> list[str]:
    """Run each `docker run --detach --name NAME ...` command; returns the container names."""
    names = []
    for cmd in commands:
        sh(cmd, env={**os.environ, **(secrets or {})})
        names.append(cmd[cmd.index("--name") + 1])
    return names


def wait_containers(names: list[str], timeout: float) -> list[int]:
    """Exit codes, in order; a container still running at the timeout is killed (exit code -1)."""
    deadline, codes = time.monotonic() + timeout, []
    for name in names:
        left = max(1.0, deadline - time.monotonic())
        try:
            res = subprocess.run(["docker", "wait", name], text=True, capture_output=True, timeout=left)
            codes.append(int(res.stdout.strip() or -1))
        except subprocess.TimeoutExpired:
            sh(["docker", "kill", name], check=False)
            codes.append(-1)
    return codes


def container_logs(name: str) -> str:
    res = sh(["docker", "logs", name], check=False)
    return res.stdout + res.stderr


def remove_containers(names: list[str]) -> None:
    if names:
        sh(["docker", "rm", "--force", *names], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the images")
    b.add_argument("--offline", action="store_true", help="debootstrap base and a local wheelhouse")
    b.add_argument("--targets", default=",".join(TARGETS))
    b.add_argument("--repository", default="", help='registry/prefix, e.g. "registry.example.com/ml"')
    b.add_argument("--base-image", help="BASE_IMAGE build arg (default: the Dockerfile's)")
    b.add_argument("--torch-variant", help="cpu (default) or a CUDA build, e.g. cu130")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    sub.add_parser("base", help=f"make {OFFLINE_BASE} with debootstrap + docker import")
    sub.add_parser("wheelhouse", help="pip download the pinned requirements into images/wheelhouse/")
    a = ap.parse_args()
    if a.cmd == "wheelhouse":
        print(wheelhouse())
        return 0
    started = start_dockerd(Path(tempfile.gettempdir()) / "cxrjobs-dockerd.log")
    try:
        if a.cmd == "base":
            print(offline_base(force=True))
            return 0
        targets = [t for t in a.targets.split(",") if t]
        bad = set(targets) - set(TARGETS)
        if bad:
            ap.error(f"unknown targets {sorted(bad)}; known: {', '.join(TARGETS)}")
        extra = {"TORCH_VARIANT": a.torch_variant} if a.torch_variant else {}
        rows = build(targets, a.offline, a.repository, a.base_image, extra)
        if a.json:
            print(json.dumps(rows, indent=1))
        else:
            for r in rows:
                print(f"{r['image']:40} {r['bytes'] / 1e6:8.0f} MB  {r['seconds']:6.0f} s")
        return 0
    except RuntimeError as e:
        log(f"error: {e}")
        return 1
    finally:
        stop_dockerd(started)


if __name__ == "__main__":
    sys.exit(main())
