"""The Kubernetes Pod Security Standards ("baseline" and "restricted", policy version 1.31+)
written as checks against rendered objects, for tests.

There is no API server here to run the PodSecurity admission plugin, so these functions apply
the same rules (https://kubernetes.io/docs/concepts/security/pod-security-standards/) to the
pod specs found in rendered objects: `restricted_violations(obj)` returns one readable line per
violated rule, an empty list when the object complies.
"""

from __future__ import annotations

from typing import Iterator

# Baseline: capabilities a container may add (restricted narrows it to NET_BIND_SERVICE).
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted: the only volume types allowed.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
VOLUME_META = {"name"}


def pod_specs(obj: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, pod metadata, pod spec) for every pod an object makes: a Pod, the template of a
    workload (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, PodTemplate) or a CronJob's
    job template."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    name = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        yield name, obj.get("metadata") or {}, spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "PodTemplate"):
        tpl = obj.get("template") if kind == "PodTemplate" else spec.get("template")
        yield name, (tpl or {}).get("metadata") or {}, (tpl or {}).get("spec") or {}
    elif kind == "CronJob":
        tpl = spec["jobTemplate"]["spec"]["template"]
        yield name, tpl.get("metadata") or {}, tpl.get("spec") or {}


def _containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield f"{field}[{c.get('name')}]", c


def baseline_violations(meta: dict, spec: dict) -> list[str]:
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field} must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess must not be true")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"volume {v.get('name')}: hostPath volumes are forbidden")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"sysctl {s.get('name')} is not in the safe set")
    for where, sc in [("pod", psc)] + [(w, c.get("securityContext") or {}) for w, c in _containers(spec)]:
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"{where}: seLinuxOptions {se} not allowed")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: seccompProfile Unconfined is forbidden")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{where}: appArmorProfile Unconfined is forbidden")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"annotation {key}={value}: AppArmor must be runtime/default or localhost/*")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}: privileged must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}: windowsOptions.hostProcess must not be true")
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPS
        if extra:
            out.append(f"{where}: capabilities.add {sorted(extra)} beyond the baseline set")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{where}: procMount must be Default")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{where}: hostPort {p['hostPort']} is forbidden")
    return out


def restricted_pod_violations(meta: dict, spec: dict) -> list[str]:
    out = baseline_violations(meta, spec)
    psc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or []:
        kinds = set(v) - VOLUME_META
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v.get('name')}: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser must not be 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}: capabilities must drop ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"{where}: capabilities.add {sorted(extra)}: only NET_BIND_SERVICE is allowed")
    return out


def restricted_violations(obj: dict) -> list[str]:
    """Every "restricted" rule that a pod made by `obj` breaks, as "Kind/name: rule" lines."""
    return [f"{where}: {v}" for where, meta, spec in pod_specs(obj)
            for v in restricted_pod_violations(meta, spec)]
