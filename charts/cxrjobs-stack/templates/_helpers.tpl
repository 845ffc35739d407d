{{/* Labels every object carries (contract: app.kubernetes.io/part-of=cxrjobs-stack). */}}
{{- define "cxrjobs-stack.labels" -}}
app.kubernetes.io/part-of: cxrjobs-stack
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end }}

{{- define "cxrjobs-stack.minioSelector" -}}
app.kubernetes.io/name: minio
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret with CXRJOBS_S3_ACCESS_KEY / CXRJOBS_S3_SECRET_KEY that everything reads. */}}
{{- define "cxrjobs-stack.s3Secret" -}}
{{- default .Values.s3.secretName .Values.s3.existingSecret -}}
{{- end }}

{{/* host:port of the S3 store, as pods see it. */}}
{{- define "cxrjobs-stack.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "cxrjobs-minio.%s.svc:%v" .Release.Namespace .Values.minio.service.port -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end }}

{{- define "cxrjobs-stack.s3Secure" -}}
{{- if and (not .Values.minio.enabled) .Values.s3.secure -}}1{{- else -}}0{{- end -}}
{{- end }}

{{- define "cxrjobs-stack.store" -}}
{{- if .Values.store.prefix -}}
{{- printf "s3://%s/%s" .Values.store.bucket (trimAll "/" .Values.store.prefix) -}}
{{- else -}}
{{- printf "s3://%s" .Values.store.bucket -}}
{{- end -}}
{{- end }}

{{- define "cxrjobs-stack.minioImage" -}}
{{- $i := .Values.minio.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository $i.tag -}}
{{- end -}}
{{- end }}

{{/* Pod-level security of every pod in the chart: the "restricted" Pod Security Standard. */}}
{{- define "cxrjobs-stack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "cxrjobs-stack.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Checks that make a wrong combination of values fail at install, with what to do. */}}
{{- define "cxrjobs-stack.validate" -}}
{{- if and .Values.minio.enabled .Values.s3.endpoint -}}
{{- fail "s3.endpoint is set but minio.enabled is true: set minio.enabled=false to use an external S3 endpoint, or leave s3.endpoint empty to use the in-cluster MinIO" -}}
{{- end -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.endpoint) -}}
{{- fail "minio.enabled is false but s3.endpoint is empty: set s3.endpoint to the host:port of your S3-compatible server (AWS S3, Ceph RGW, SeaweedFS, Garage)" -}}
{{- end -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.existingSecret) -}}
{{- fail "an external S3 endpoint needs s3.existingSecret: create a Secret with keys CXRJOBS_S3_ACCESS_KEY and CXRJOBS_S3_SECRET_KEY (kubectl create secret generic NAME --from-literal=CXRJOBS_S3_ACCESS_KEY=... --from-literal=CXRJOBS_S3_SECRET_KEY=...) and set s3.existingSecret=NAME" -}}
{{- end -}}
{{- if and .Values.kuberay.enabled .Values.kuberay.required (not (.Capabilities.APIVersions.Has "ray.io/v1")) -}}
{{- fail (printf "kuberay.required is true but the ray.io/v1 API (KubeRay) is not installed in this cluster: helm install kuberay-operator kuberay/kuberay-operator --version %s --namespace ray-system --create-namespace (repository https://ray-project.github.io/kuberay-helm/), or set kuberay.required=false" .Values.kuberay.version) -}}
{{- end -}}
{{- end }}

{{/* An RBAC subject from values: {kind: User|Group|ServiceAccount, name, namespace?}. */}}
{{- define "cxrjobs-stack.subject" -}}
kind: {{ .s.kind }}
name: {{ .s.name | quote }}
{{- if eq .s.kind "ServiceAccount" }}
namespace: {{ default .ns .s.namespace }}
{{- else }}
apiGroup: rbac.authorization.k8s.io
{{- end }}
{{- end }}
