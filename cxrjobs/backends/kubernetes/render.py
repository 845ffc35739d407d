"""Kubernetes objects for a job: pure functions of (JobSpec, KubeOptions) -> list of dicts.

No environment, kubeconfig or cluster is read here: `cxrjobs submit ... --dry-run` prints the
output of `render`, and `schedule` creates exactly those objects (adding only the Service's
ownerReference, whose Job uid exists once the Job does).

- Kinds whose registry workload is "indexed-job": a batch/v1 Indexed Job of `replicas` pods; for
  kinds whose replicas rendezvous (DDP) also a headless Service that gives pod 0 a stable DNS
  name, MASTER_ADDR=<job>-0.<service>.
- Kinds whose workload is "ray-job": a KubeRay ray.io/v1 RayJob (KubeRay v1.3 or newer) whose
  cluster has one head and `replicas` worker pods.

Every pod meets the "restricted" Pod Security Standard (see pss.py, which the tests apply).
"""

from __future__ import annotations

from cxrjobs.backends.base import ENTRYPOINT, pod_env
from cxrjobs.backends.kubernetes.options import KubeOptions, quantity_value
from cxrjobs.errors import ConfigError
from cxrjobs.jobs.logmirror import ENV_FLAG as LOG_ENV_FLAG
from cxrjobs.jobs.registry import get_kind
from cxrjobs.jobs.spec import KUBERAY_NAME_MAX, JobSpec

CONTAINER = "replica"          # the Job pods' one container (podFailurePolicy names it)
USER_ERROR_EXIT_CODE = 2       # the entrypoint's exit code for a CxrError: retrying cannot help
RUN_LABEL = "cxrjobs.io/run"
ROLE_LABEL = "cxrjobs.io/role"
# Where a read-only root filesystem still needs writable space.
SCRATCH = {"tmp": "/tmp", "cache": "/cache"}
SANDBOX_ENV = {
    "HOME": "/tmp",
    "XDG_CACHE_HOME": "/cache",
    "CXRJOBS_CACHE_DIR": "/cache/cxrjobs",
    "TORCH_HOME": "/cache/torch",
    "MPLCONFIGDIR": "/tmp/matplotlib",
}
RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}


# --- names and labels ---------------------------------------------------------------------------

def labels(job: JobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "cxrjobs",
        "app.kubernetes.io/component": job.kind,
        "app.kubernetes.io/instance": job.name,
        "app.kubernetes.io/managed-by": "cxrjobs",
        RUN_LABEL: job.name,
    }


def run_selector(run: str) -> str:
    return f"{RUN_LABEL}={run}"


def service_name(job: JobSpec) -> str:
    """The headless Service's name: the run's own (a DNS-1035 label, so it starts with a letter)."""
    if not job.name[0].isalpha():
        raise ConfigError(f"run name {job.name!r}: on Kubernetes a run name must start with a letter "
                          "(it names the rendezvous Service); pick another --name")
    return job.name


def master_addr(job: JobSpec) -> str:
    # An Indexed Job pod's hostname is <job>-<index>; its subdomain makes it resolvable.
    return f"{job.name}-0.{service_name(job)}"


def image_for(job: JobSpec, options: KubeOptions) -> str:
    kind = get_kind(job.kind)
    if kind.workload == "ray-job":
        return options.image("cxrjobs-tune")
    if kind.payload == "preprocess":
        return options.image("cxrjobs-preprocess")
    return options.image("cxrjobs-train")


# --- pod security (reused by the RayJob's pod templates and by the Helm chart's tests) ----------

def container_security_context() -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(options: KubeOptions) -> dict:
    uid = options.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def scratch_volumes(options: KubeOptions) -> tuple[list[dict], list[dict]]:
    """(volumes, volumeMounts): emptyDirs for /tmp and caches, a memory-backed /dev/shm."""
    volumes = [{"name": n, "emptyDir": {}} for n in SCRATCH]
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": options.shm_size}})
    mounts = [{"name": n, "mountPath": p} for n, p in SCRATCH.items()]
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def resources(options: KubeOptions) -> dict:
    requests = {"cpu": options.cpu, "memory": options.memory}
    limits = {}
    if options.cpu_limit:
        limits["cpu"] = options.cpu_limit
    if options.memory_limit:
        limits["memory"] = options.memory_limit
    if options.gpus:
        limits["nvidia.com/gpu"] = str(options.gpus)
    return {"requests": requests, **({"limits": limits} if limits else {})}


# A Ray head runs Ray's own services and the search's driver, never a trial (num-cpus 0): it gets
# a default pod's resources, or the workers' where those are smaller, and never a GPU.
HEAD_CPU, HEAD_MEMORY, HEAD_MEMORY_LIMIT = "1", "2Gi", "4Gi"


def _smaller(a: str, b: str) -> str:
    return a if quantity_value(a) <= quantity_value(b) else b


def head_resources(options: KubeOptions) -> dict:
    """The head's own resources: --gpus and --cpu/--memory size the workers (each runs trials);
    given to the head too, they kept a GPU idle and reserved a worker's CPU and memory for the
    driver. Each request and limit is the smaller of the head's default and the workers' (so
    the head fits wherever a worker does, and its requests stay within its limits, as the
    workers' do); a limit is set only where the workers have one (a quota may require it)."""
    requests = {"cpu": _smaller(options.cpu, HEAD_CPU), "memory": _smaller(options.memory, HEAD_MEMORY)}
    limits = {}
    if options.cpu_limit:
        limits["cpu"] = _smaller(options.cpu_limit, HEAD_CPU)
    if options.memory_limit:
        limits["memory"] = _smaller(options.memory_limit, HEAD_MEMORY_LIMIT)
    return {"requests": requests, **({"limits": limits} if limits else {})}


def env_list(env: dict[str, str]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in env.items()]


def env_from(options: KubeOptions) -> list[dict]:
    """Store settings from the ConfigMap, credentials from the Secret: never literal values."""
    return [{"configMapRef": {"name": options.config_map}}, {"secretRef": {"name": options.secret}}]


def container(name: str, image: str, options: KubeOptions, env: dict[str, str],
              command: list[str] | None = None, ports: dict[str, int] | None = None) -> dict:
    _, mounts = scratch_volumes(options)
    c = {"name": name, "image": image, "imagePullPolicy": options.image_pull_policy}
    if command:
        c["command"] = command
    c["env"] = env_list({**env, **SANDBOX_ENV})
    c["envFrom"] = env_from(options)
    if ports:
        c["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()]
    c["resources"] = resources(options)
    c["securityContext"] = container_security_context()
    c["volumeMounts"] = mounts
    return c


def pod_spec(containers: list[dict], options: KubeOptions, restart_policy: str | None = None,
             subdomain: str | None = None) -> dict:
    volumes, _ = scratch_volumes(options)
    spec: dict = {}
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    if subdomain:
        spec["subdomain"] = subdomain
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    spec["automountServiceAccountToken"] = False
    spec["enableServiceLinks"] = False
    spec["securityContext"] = pod_security_context(options)
    if options.node_selector:
        spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        spec["tolerations"] = [t.to_k8s() for t in options.tolerations]
    spec["containers"] = containers
    spec["volumes"] = volumes
    return spec


def pod_template(job: JobSpec, spec: dict, role: str | None = None) -> dict:
    meta_labels = labels(job)
    if role:
        meta_labels[ROLE_LABEL] = role
    return {"metadata": {"labels": meta_labels}, "spec": spec}


def metadata(job: JobSpec, options: KubeOptions, name: str | None = None) -> dict:
    return {"name": name or job.name, "namespace": options.namespace, "labels": labels(job)}


# --- Indexed Job (+ headless Service) -----------------------------------------------------------

def backoff_limit(job: JobSpec) -> int:
    """Pod failures the Job tolerates. A crashed DDP replica makes its peers fail their next
    collective, so one group restart costs up to `replicas` failed pods."""
    return job.replicas * job.backoff_limit


def indexed_job(job: JobSpec, options: KubeOptions) -> list[dict]:
    kind = get_kind(job.kind)
    rendezvous = kind.rendezvous
    svc = service_name(job) if rendezvous else None
    # Slices (no rendezvous) never talk to each other: no MASTER_*.
    env = pod_env(job, master_addr(job) if rendezvous else None, options.master_port)
    env[LOG_ENV_FLAG] = "1"  # the entrypoint mirrors its output into the store: pods are deleted
    main = container(CONTAINER, image_for(job, options), options, env,
                     command=["python", *ENTRYPOINT],
                     ports={"rendezvous": options.master_port} if rendezvous else None)
    spec = pod_spec([main], options, restart_policy="Never", subdomain=svc)
    job_obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job, options),
        "spec": {
            "completionMode": "Indexed",
            "completions": job.replicas,
            "parallelism": job.replicas,
            "backoffLimit": backoff_limit(job),
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            "activeDeadlineSeconds": options.active_deadline_seconds,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                 "values": [USER_ERROR_EXIT_CODE]}},
                {"action": "Ignore",
                 "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": pod_template(job, spec),
        },
    }
    objects = [job_obj]
    if rendezvous:
        objects.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(job, options, svc),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,  # rendezvous happens before any readiness
                "selector": {RUN_LABEL: job.name},
                "ports": [{"name": "rendezvous", "port": options.master_port,
                           "targetPort": options.master_port, "protocol": "TCP"}],
            },
        })
    return objects


def owner_reference(job_obj: dict) -> dict:
    """The reference that makes a created Job own its Service (deleting the Job deletes it)."""
    meta = job_obj["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"],
            "controller": False, "blockOwnerDeletion": True}


# --- KubeRay RayJob -----------------------------------------------------------------------------

def ray_job(job: JobSpec, options: KubeOptions) -> list[dict]:
    # KubeRay's ValidateRayJobMetadata: a DNS-1035 label (JobSpec allows digits first, as a
    # local run may) of at most 47 characters (JobSpec enforces that on every backend already).
    if not job.name[0].isalpha() or len(job.name) > KUBERAY_NAME_MAX:
        raise ConfigError(f"run name {job.name!r}: on Kubernetes a search's name must start with a letter "
                          f"and have at most {KUBERAY_NAME_MAX} characters (KubeRay takes DNS-1035 names "
                          "only); pick another --name")
    image = image_for(job, options)
    env = {"CXRJOBS_RUN_ID": job.name, "PYTHONUNBUFFERED": "1"}

    def template(role: str, name: str, ports: dict[str, int] | None = None) -> dict:
        return pod_template(job, pod_spec([container(name, image, options, env, ports=ports)], options),
                            role=role)

    head = template("head", "ray-head", RAY_PORTS)
    head["spec"]["containers"][0]["resources"] = head_resources(options)
    submitter = template("submitter", "ray-job-submitter")
    submitter["spec"]["restartPolicy"] = "Never"
    submitter["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    return [{
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata(job, options),
        "spec": {
            "entrypoint": " ".join(["python", *ENTRYPOINT]),
            # The driver's own environment (it also inherits the head container's).
            "runtimeEnvYAML": f"env_vars:\n  CXRJOBS_RUN_ID: {job.name}\n",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
            "activeDeadlineSeconds": options.active_deadline_seconds,
            "backoffLimit": job.backoff_limit,
            "submitterPodTemplate": submitter,
            "rayClusterSpec": {
                "rayVersion": options.ray_version,
                "headGroupSpec": {
                    # The head runs the driver only; trials go to the worker pods.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": head,
                },
                "workerGroupSpecs": [{
                    "groupName": "workers",
                    "replicas": job.replicas,
                    "minReplicas": job.replicas,
                    "maxReplicas": job.replicas,
                    "rayStartParams": {},
                    "template": template("worker", "ray-worker"),
                }],
            },
        },
    }]


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) of every pod an object renders: for validation and PSS checks."""
    if obj["kind"] == "Job":
        return [("spec.template", obj["spec"]["template"])]
    if obj["kind"] == "RayJob":
        spec = obj["spec"]
        out = [("spec.submitterPodTemplate", spec["submitterPodTemplate"]),
               ("spec.rayClusterSpec.headGroupSpec.template", spec["rayClusterSpec"]["headGroupSpec"]["template"])]
        for i, g in enumerate(spec["rayClusterSpec"]["workerGroupSpecs"]):
            out.append((f"spec.rayClusterSpec.workerGroupSpecs[{i}].template", g["template"]))
        return out
    return []


def render(job: JobSpec, options: KubeOptions) -> list[dict]:
    """Every object `schedule` creates for `job`, in creation order."""
    if get_kind(job.kind).workload == "ray-job":
        return ray_job(job, options)
    return indexed_job(job, options)
