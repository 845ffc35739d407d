"""The "restricted" Pod Security Standard, checked on rendered objects (no cluster needed).

`violations(obj)` returns one message per rule a pod of `obj` breaks, naming the pod and the
field; an empty list means every pod it renders is admitted by a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`. It knows the pods of Pods, Jobs, CronJobs,
Deployments, StatefulSets, DaemonSets, ReplicaSets and KubeRay RayJobs / RayClusters, so the Helm
chart's tests can apply it to their manifests too. Rules follow
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted).
"""

from __future__ import annotations

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
                "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
                "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template an object carries."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    name = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        return [(name, spec)]
    if kind == "PodTemplate":
        return [(name, (obj.get("template") or {}).get("spec") or {})]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"):
        return [(f"{name} spec.template", spec["template"]["spec"])]
    if kind == "CronJob":
        return [(f"{name} spec.jobTemplate", spec["jobTemplate"]["spec"]["template"]["spec"])]
    out = []
    if kind == "RayJob":
        if spec.get("submitterPodTemplate"):
            out.append((f"{name} submitterPodTemplate", spec["submitterPodTemplate"]["spec"]))
        cluster = spec.get("rayClusterSpec") or {}
    elif kind == "RayCluster":
        cluster = spec
    else:
        return []
    if cluster.get("headGroupSpec"):
        out.append((f"{name} headGroupSpec", cluster["headGroupSpec"]["template"]["spec"]))
    for g in cluster.get("workerGroupSpecs") or []:
        out.append((f"{name} workerGroupSpecs[{g.get('groupName')}]", g["template"]["spec"]))
    return out


def pod_violations(spec: dict, where: str = "pod") -> list[str]:
    bad: list[str] = []
    psc = spec.get("securityContext") or {}
    containers = [(f"{where} container {c.get('name')}", c)
                  for key in ("initContainers", "containers", "ephemeralContainers")
                  for c in spec.get(key) or []]
    if not spec.get("containers"):
        bad.append(f"{where}: no containers")
    # --- baseline
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            bad.append(f"{where}: {host} must not be true")
    for v in spec.get("volumes") or []:
        types = set(v) - {"name"}
        if "hostPath" in types:
            bad.append(f"{where}: volume {v.get('name')} is a hostPath")
        elif not types <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"{where}: volume {v.get('name')} has type {sorted(types)}, not one of "
                       f"{sorted(RESTRICTED_VOLUME_TYPES)}")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            bad.append(f"{where}: sysctl {s.get('name')} is not in the safe set")
    if (psc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
        bad.append(f"{where}: seLinuxOptions.type is not allowed")
    pod_nonroot = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if psc.get("runAsUser") == 0:
        bad.append(f"{where}: securityContext.runAsUser must not be 0")
    if pod_seccomp == "Unconfined":
        bad.append(f"{where}: securityContext.seccompProfile.type must not be Unconfined")
    if (psc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        bad.append(f"{where}: appArmorProfile must not be Unconfined")
    for cwhere, c in containers:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{cwhere}: privileged must not be true")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                bad.append(f"{cwhere}: hostPort {p['hostPort']} is not allowed")
        if sc.get("procMount") not in (None, "Default"):
            bad.append(f"{cwhere}: procMount must be Default")
        if (sc.get("seLinuxOptions") or {}).get("type") not in SELINUX_TYPES:
            bad.append(f"{cwhere}: seLinuxOptions.type is not allowed")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{cwhere}: appArmorProfile must not be Unconfined")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            bad.append(f"{cwhere}: capabilities {sorted(added - BASELINE_CAPABILITIES)} may not be added")
        # --- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{cwhere}: securityContext.allowPrivilegeEscalation must be false")
        nonroot = sc.get("runAsNonRoot")
        if nonroot is False or (nonroot is None and not pod_nonroot):
            bad.append(f"{cwhere}: runAsNonRoot must be true (on the container or the pod)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{cwhere}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{cwhere}: seccompProfile.type must be RuntimeDefault or Localhost "
                       "(on the container or the pod)")
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{cwhere}: capabilities.drop must include ALL")
        if added - {"NET_BIND_SERVICE"}:
            bad.append(f"{cwhere}: only NET_BIND_SERVICE may be added to capabilities")
    return bad


def violations(obj: dict) -> list[str]:
    return [msg for where, spec in pod_specs(obj) for msg in pod_violations(spec, where)]
