{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "tokex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, plus the chart name unless the
release name already contains it.
*/}}
{{- define "tokex.fullname" -}}
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

{{- define "tokex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokex.labels" -}}
helm.sh/chart: {{ include "tokex.chart" . }}
{{ include "tokex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{- define "tokex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokex.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tokex.configMapName" -}}
{{- printf "%s-config" (include "tokex.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tokex.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if not $tag -}}
{{- fail "image.tag is required (the tokex sidecar template was called without the chart's appVersion)" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
The tokex configuration text: `config` is normally a string (verbatim YAML);
a map is accepted too and serialised with toYaml.
*/}}
{{- define "tokex.configText" -}}
{{- if kindIs "string" .Values.config }}
{{- .Values.config }}
{{- else }}
{{- toYaml .Values.config }}
{{- end }}
{{- end }}

{{/*
Fail early on values that can only produce a broken pod.
*/}}
{{- define "tokex.validate" -}}
{{- if not (has .Values.mode (list "edge" "sidecar")) }}
{{- fail (printf "mode must be edge or sidecar, not %q" .Values.mode) }}
{{- end }}
{{- if empty .Values.config }}
{{- fail "config is empty: set the tokex YAML configuration in values (config: |)" }}
{{- end }}
{{- if and .Values.actorToken.enabled (lt (int .Values.actorToken.expirationSeconds) 600) }}
{{- fail "actorToken.expirationSeconds must be at least 600 (Kubernetes minimum)" }}
{{- end }}
{{- if and .Values.actorToken.enabled (not .Values.actorToken.audience) }}
{{- fail "actorToken.audience is required when actorToken.enabled (the audience your authorization server expects)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu (the HPA's utilisation is a share of it)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.admin.enabled) }}
{{- fail "serviceMonitor.enabled needs service.admin.enabled (it scrapes the admin Service's port \"admin\")" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
Environment of the tokex container (shared by the edge Deployment and the
sidecar template in _sidecar.tpl).
*/}}
{{- define "tokex.env" -}}
- name: TOKEX_CONFIG
  value: /etc/tokex/config.yaml
- name: TOKEX_LOG
  value: {{ .Values.log.level | quote }}
- name: TOKEX_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- if .Values.strict }}
- name: TOKEX_STRICT
  value: "1"
{{- end }}
{{- if .Values.existingSecret.name }}
- name: {{ .Values.existingSecret.envVar }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret.name }}
      key: {{ .Values.existingSecret.key }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volume mounts of the tokex container.
The ConfigMap is mounted as a directory (no subPath) so that the kubelet
updates the file in place when the ConfigMap changes and tokex reloads it.
*/}}
{{- define "tokex.volumeMounts" -}}
- name: tokex-config
  mountPath: /etc/tokex
  readOnly: true
{{- if and .Values.existingSecret.name .Values.existingSecret.mountPath }}
- name: tokex-secret
  mountPath: {{ .Values.existingSecret.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.actorToken.enabled }}
- name: tokex-actor-token
  mountPath: {{ dir .Values.actorToken.path }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tokex.volumes" -}}
- name: tokex-config
  configMap:
    name: {{ include "tokex.configMapName" . }}
{{- if and .Values.existingSecret.name .Values.existingSecret.mountPath }}
- name: tokex-secret
  secret:
    secretName: {{ .Values.existingSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ .Values.existingSecret.key }}
        path: {{ .Values.existingSecret.key }}
{{- end }}
{{- if .Values.actorToken.enabled }}
- name: tokex-actor-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.actorToken.audience | quote }}
          expirationSeconds: {{ int .Values.actorToken.expirationSeconds }}
          path: {{ base .Values.actorToken.path }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
