{{/* Names, labels and values shared by the templates. */}}

{{- define "livefilter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart>, or the release name alone when it already contains the
chart name. Truncated to 63 characters (a DNS label).
*/}}
{{- define "livefilter.fullname" -}}
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

{{- define "livefilter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every object of the release (each adds its component). */}}
{{- define "livefilter.labels" -}}
helm.sh/chart: {{ include "livefilter.chart" . }}
app.kubernetes.io/name: {{ include "livefilter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: livefilter
{{- end }}

{{/* The operator's objects. */}}
{{- define "livefilter.operatorLabels" -}}
{{ include "livefilter.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The monitoring objects (monitors, rules, dashboard). */}}
{{- define "livefilter.monitoringLabels" -}}
{{ include "livefilter.labels" . }}
app.kubernetes.io/component: monitoring
{{- end }}

{{/* Selects the operator's Pods. */}}
{{- define "livefilter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "livefilter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the operator puts on every relay Pod (operator/src/objects.rs `labels`). */}}
{{- define "livefilter.relaySelectorLabels" -}}
app.kubernetes.io/name: livefilter-relay
app.kubernetes.io/managed-by: livefilter-operator
{{- end }}

{{- define "livefilter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "livefilter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion.
Usage: include "livefilter.image" (list .Values.operator.image .Chart.AppVersion)
*/}}
{{- define "livefilter.image" -}}
{{- $image := index . 0 }}
{{- $default := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $default $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* "true" when the operator elects a leader: by default exactly when replicas > 1. */}}
{{- define "livefilter.leaderElect" -}}
{{- $replicas := int .Values.operator.replicas }}
{{- $enabled := .Values.operator.leaderElection.enabled }}
{{- if kindIs "invalid" $enabled }}
{{- /* Always elect: even one replica overlaps with its successor during a rolling update. */ -}}
true
{{- else if and (not $enabled) (gt $replicas 1) }}
{{- fail "operator.leaderElection.enabled=false needs operator.replicas=1: two active operators would hand out the same host ports" }}
{{- else }}
{{- ternary "true" "false" $enabled }}
{{- end }}
{{- end }}

{{- define "livefilter.leaseName" -}}
{{- default (include "livefilter.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* The low and high ends of a "LOW-HIGH" port range, as a list of two ints. */}}
{{- define "livefilter.portRange" -}}
{{- $parts := splitList "-" . }}
{{- if ne (len $parts) 2 }}
{{- fail (printf "port range %q is not LOW-HIGH" .) }}
{{- end }}
{{- $low := index $parts 0 | int }}
{{- $high := index $parts 1 | int }}
{{- if or (lt $low 1024) (gt $high 65535) (gt $low $high) }}
{{- fail (printf "port range %q must lie within 1024-65535, low end first" .) }}
{{- end }}
{{- list $low $high | toJson }}
{{- end }}

{{/*
What the operator does with the objects of a session, in the namespaces it watches. Each verb
is one the operator's code uses (operator/src/controller.rs, main.rs; kube-runtime's finalizer
and event recorder); reads of children go through watch caches, never GET.
*/}}
{{- define "livefilter.sessionRules" -}}
# Sessions: listed and watched; the finalizer is added and removed with JSON patches.
- apiGroups: [livefilter.dev]
  resources: [livefiltersessions]
  verbs: [list, watch, patch]
# Status: server-side apply.
- apiGroups: [livefilter.dev]
  resources: [livefiltersessions/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which needs this.
- apiGroups: [livefilter.dev]
  resources: [livefiltersessions/finalizers]
  verbs: [update]
# Relay Pods: server-side applied (an apply that creates needs create), annotated with the
# node's ExternalIP, deleted to roll or recreate.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, patch, delete]
# The relay's ConfigMap and the /offer Service: server-side applied, garbage-collected with
# the session.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, watch, create, patch]
# The optional /offer Ingress: deleted when the session drops it.
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [list, watch, create, patch, delete]
# The ImageFlux API token, read when a channel is created, listed or deleted.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on sessions (kube-runtime's recorder creates them, then patches their series).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
