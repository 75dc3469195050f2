{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "retrieve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object of the release. */}}
{{- define "retrieve.fullname" -}}
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

{{- define "retrieve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass a dict with "ctx" (root) and "component". */}}
{{- define "retrieve.labels" -}}
helm.sh/chart: {{ include "retrieve.chart" .ctx }}
{{ include "retrieve.selectorLabels" . }}
app.kubernetes.io/part-of: retrieve
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{- define "retrieve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retrieve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "retrieve.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "retrieve.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "retrieve.peeringName" -}}
{{- default (printf "%s-operator" (include "retrieve.fullname" .)) .Values.operator.peering.name }}
{{- end }}

{{- define "retrieve.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "retrieve.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) }}
{{- end }}

{{- define "retrieve.redisName" -}}
{{- printf "%s-redis" (include "retrieve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* redis.mode, checked; redis.enabled=false (values older than redis.mode) means external. */}}
{{- define "retrieve.redisMode" -}}
{{- $mode := .Values.redis.mode | default "standalone" }}
{{- if not (has $mode (list "standalone" "sentinel" "cluster" "external")) }}
{{- fail (printf "redis.mode must be standalone, sentinel, cluster or external, not %q" $mode) }}
{{- end }}
{{- if and (eq $mode "standalone") (not .Values.redis.enabled) }}external{{ else }}{{ $mode }}{{ end }}
{{- end }}

{{/* "true" when the chart installs its own Redis (standalone mode), else empty. */}}
{{- define "retrieve.redisInChart" -}}
{{- if eq (include "retrieve.redisMode" .) "standalone" }}true{{ end }}
{{- end }}

{{/* The Redis URL of applications without spec.redis. */}}
{{- define "retrieve.redisUrl" -}}
{{- $mode := include "retrieve.redisMode" . }}
{{- if eq $mode "standalone" }}
{{- printf "redis://%s.%s.svc:6379/0" (include "retrieve.redisName" .) .Release.Namespace }}
{{- else if eq $mode "sentinel" }}
{{- $sentinel := .Values.redis.sentinel }}
{{- if not $sentinel.hosts }}{{ fail "redis.sentinel.hosts is required when redis.mode is sentinel" }}{{ end }}
{{- if not $sentinel.service }}{{ fail "redis.sentinel.service is required when redis.mode is sentinel" }}{{ end }}
{{- printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" (eq (toString $sentinel.tls) "true")) (join "," $sentinel.hosts) $sentinel.service (int $sentinel.db) }}
{{- else if eq $mode "cluster" }}
{{- if not .Values.redis.cluster.nodes }}{{ fail "redis.cluster.nodes is required when redis.mode is cluster" }}{{ end }}
{{- printf "%s://%s" (ternary "rediss+cluster" "redis+cluster" (eq (toString .Values.redis.cluster.tls) "true")) (join "," .Values.redis.cluster.nodes) }}
{{- else }}
{{- required "redis.external.url is required when redis.mode is external (or redis.enabled is false)" .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/* RBAC rules generated from retrieve_operator.rbac (files/rbac-rules.yaml). */}}
{{- define "retrieve.rbacRules" -}}
{{- .Files.Get "files/rbac-rules.yaml" | fromYaml | toJson }}
{{- end }}
