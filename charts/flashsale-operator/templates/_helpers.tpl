{{- define "flashsale.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flashsale.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "flashsale.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "flashsale.serviceAccountName" -}}
{{- default (include "flashsale.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The agent namespace (the drain-agent contract): drain agents and their RBAC live here, under
the same name in every cluster. It is the release's namespace in both modes. */}}
{{- define "flashsale.agentNamespace" -}}
{{- default .Release.Namespace .Values.agents.namespace -}}
{{- end -}}

{{- define "flashsale.checkMode" -}}
{{- if not (has .Values.mode (list "operator" "remote")) -}}
{{- fail (printf "mode must be operator or remote, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{/* What the levers do to objects in a sale's namespace, in any cluster (the operator's own and
remote ones alike). Each rule names the lever that needs it. */}}
{{- define "flashsale.leverRules" -}}
# Pre-scaling and probe timings: the workloads are watched (the operator reads them from
# its watch cache), then one server-side apply of replicas, probe timings and bookkeeping.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "patch"]
{{- if or (ne .Values.mode "operator") .Values.watchNamespace }}
# Say why a workload is short of peak (its pods Unschedulable, CrashLoopBackOff), read from
# the watch cache of the workload's pods (label selector), never written. Without
# watchNamespace this is granted only where sales live (beside the Secrets, below).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- end }}
# CronHPA mode and the HPA restore set replicas through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["patch"]
# Find the HPA governing a workload; raise its bounds and restore them.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "patch"]
# CronHPA mode: the run-once scale-up and scale-down object, applied (created) and removed.
- apiGroups: ["autoscaling.alibabacloud.com"]
  resources: ["cronhorizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Preflight: is the workload covered by a PodDisruptionBudget.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch"]
# Degradation flags in flagd's format: publish, restore a pre-existing ConfigMap, or delete
# the one the sale created. The sale's one ConfigMap is watched by name (a field selector).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# degradation.target FeatureFlag: the OpenFeature operator's object, the same way.
- apiGroups: ["core.openfeature.dev"]
  resources: ["featureflags"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Cache warm-up Jobs: watched by label, created ahead of the window, cleaned up at restore.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
{{- end -}}

{{/* Cluster-scoped reads, in any cluster: nothing cluster-scoped is ever written. Preflight
also asks the authorizer whether each right the levers need is held (SelfSubjectAccessReview);
every authenticated user may ask that (the built-in system:basic-user), so no rule grants it. */}}
{{- define "flashsale.clusterRules" -}}
# Preflight compares peak requests with the nodes' allocatable capacity; spot drain counts
# the nodes its selector matches, from one watch of them. Read only: nodes are never written
# by the operator.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# Whether CronHPA (mode Auto/CronHPA) and the OpenFeature FeatureFlag CRD are installed:
# those two CRDs, by name, and no other (watched with a name field selector, which RBAC
# authorizes by resourceNames).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames:
    - cronhorizontalpodautoscalers.autoscaling.alibabacloud.com
    - featureflags.core.openfeature.dev
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* Drain agents (the contract): one DaemonSet per agent configuration in the agent namespace,
run as the ServiceAccount the chart pre-installs there, which the operator only reads (to say
"agent RBAC not installed" in preflight). The operator creates no ServiceAccount or RBAC. */}}
{{- define "flashsale.agentRules" -}}
- apiGroups: ["apps"]
  resources: ["daemonsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  resourceNames: ["flashsale-drain-agent"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* remote.subjects as RBAC subjects (the operator's identity in a remote cluster). */}}
{{- define "flashsale.remoteSubjects" -}}
{{- range .Values.remote.subjects }}
- kind: {{ required "remote.subjects[].kind (User, Group or ServiceAccount)" .kind }}
  name: {{ required "remote.subjects[].name" .name | quote }}
  {{- if eq .kind "ServiceAccount" }}
  namespace: {{ required "remote.subjects[].namespace of a ServiceAccount" .namespace }}
  {{- else }}
  apiGroup: rbac.authorization.k8s.io
  {{- end }}
{{- end }}
{{- end -}}

{{/* The operator's image (the drain agents run the same): registry/repository, then @digest or :tag. */}}
{{- define "flashsale.image" -}}
{{- $repo := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}
