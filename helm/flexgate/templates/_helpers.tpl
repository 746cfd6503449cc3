{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "flexgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless the release already contains it. */}}
{{- define "flexgate.fullname" -}}
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

{{- define "flexgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flexgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flexgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flexgate.labels" -}}
helm.sh/chart: {{ include "flexgate.chart" . }}
{{ include "flexgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* "true" when the chart creates the Secret (a value is set and no existing Secret is named). */}}
{{- define "flexgate.createSecret" -}}
{{- $s := .Values.secret }}
{{- if and (not $s.existingSecret) (or $s.adminToken $s.databaseUrl $s.redisUrl $s.natsUrl) }}true{{ end }}
{{- end }}

{{/* The Secret the container reads its environment from, if any. */}}
{{- define "flexgate.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if include "flexgate.createSecret" . }}
{{- include "flexgate.fullname" . }}
{{- end }}
{{- end }}

{{/* preStop sleep + grace period + the same again for the runtimes to stop + 10 s. */}}
{{- define "flexgate.terminationGracePeriodSeconds" -}}
{{- add (int .Values.drain.preStopSleepSeconds) (mul 2 (int .Values.drain.gracePeriodSeconds)) 10 }}
{{- end }}

{{/* flexgate.yaml: .Values.config with the settings the chart owns. */}}
{{- define "flexgate.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $proxy := get $config "proxy" | default dict }}
{{- $_ := set $proxy "gracePeriod" (printf "%ds" (int .Values.drain.gracePeriodSeconds)) }}
{{- $_ = set $config "proxy" $proxy }}
{{- $admin := get $config "admin" | default dict }}
{{- $_ = set $admin "listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) }}
{{- $_ = set $config "admin" $admin }}
{{- toYaml $config }}
{{- end }}
