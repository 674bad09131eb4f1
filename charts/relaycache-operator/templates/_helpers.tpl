{{/* Chart name, overridable. */}}
{{- define "relaycache-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name. A release whose name already contains the
chart name is not repeated ("relaycache-operator", not
"relaycache-operator-relaycache-operator").
*/}}
{{- define "relaycache-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "relaycache-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selectors rely on; never change them between versions. */}}
{{- define "relaycache-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relaycache-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "relaycache-operator.labels" -}}
helm.sh/chart: {{ include "relaycache-operator.chart" . }}
{{ include "relaycache-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relaycache
{{- end }}

{{/* Labels of resources that are not the operator itself (CRD, dashboard, policies). */}}
{{- define "relaycache-operator.commonLabels" -}}
helm.sh/chart: {{ include "relaycache-operator.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relaycache
{{- end }}

{{- define "relaycache-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relaycache-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service that fronts the webhook and the health/metrics port. */}}
{{- define "relaycache-operator.serviceName" -}}
{{- include "relaycache-operator.fullname" . }}
{{- end }}

{{/* Secret with the serving certificate (cert-manager or the operator writes it). */}}
{{- define "relaycache-operator.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "relaycache-operator.fullname" .) }}
{{- end }}

{{- define "relaycache-operator.leaseName" -}}
{{- default (include "relaycache-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to appVersion. */}}
{{- define "relaycache-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "relaycache-operator.proxyImage" -}}
{{- printf "%s:%s" .Values.proxyImage.repository (default .Chart.AppVersion .Values.proxyImage.tag) }}
{{- end }}

{{/*
Pod and container security contexts of the `restricted` Pod Security
profile. They are not values on purpose: nothing this chart runs needs more,
and scripts/chart-check.sh asserts every pod and container renders them.
*/}}
{{- define "relaycache-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "relaycache-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Namespaces the webhook never sees. */}}
{{- define "relaycache-operator.webhookExcludedNamespaces" -}}
{{- $excluded := list "kube-system" .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}
{{- $excluded = append $excluded . }}
{{- end }}
{{- toYaml (uniq $excluded) }}
{{- end }}

{{/* Namespaces that get the cache-member NetworkPolicy. */}}
{{- define "relaycache-operator.cacheNamespaces" -}}
{{- if .Values.networkPolicy.cacheNamespaces }}
{{- toYaml (uniq .Values.networkPolicy.cacheNamespaces) }}
{{- else }}
{{- toYaml (list .Release.Namespace) }}
{{- end }}
{{- end }}
