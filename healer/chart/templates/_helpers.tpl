{{/* Chart name, truncated to 63 characters (the DNS label limit of names). */}}
{{- define "dnspulse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release + chart, truncated to 63; the release name alone when it already
contains the chart name.
*/}}
{{- define "dnspulse.fullname" -}}
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

{{/* A name derived from the full name with a suffix, still within 63 characters. */}}
{{- define "dnspulse.suffixed" -}}
{{- $full := include "dnspulse.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "dnspulse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dnspulse.labels" -}}
helm.sh/chart: {{ include "dnspulse.chart" . }}
{{ include "dnspulse.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dnspulse
{{- end }}

{{- define "dnspulse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dnspulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dnspulse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dnspulse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Static mode: targets from values, no Kubernetes discovery, canary or leader election. */}}
{{- define "dnspulse.static" -}}
{{- if .Values.static.targets }}true{{ end }}
{{- end }}

{{- define "dnspulse.canaryNamespace" -}}
{{- default .Release.Namespace .Values.canary.namespace }}
{{- end }}

{{- define "dnspulse.leaseNamespace" -}}
{{- default (include "dnspulse.canaryNamespace" .) .Values.leaderElection.namespace }}
{{- end }}

{{- define "dnspulse.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
