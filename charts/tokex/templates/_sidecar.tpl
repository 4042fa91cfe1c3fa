{{/*
The tokex sidecar, for an application's pod: two named templates that render
list items.

  tokex.sidecarContainer  the tokex container. With sidecar.native (the
                          default) it carries restartPolicy: Always and goes
                          under the pod's initContainers: a native sidecar
                          (Kubernetes >= 1.29), started before the application
                          and stopped after it. With sidecar.native: false it
                          goes under containers.
  tokex.sidecarVolumes    its volumes: the ConfigMap (mounted as a directory,
                          so hot reload works), the client Secret
                          (existingSecret.mountPath), the projected actor
                          token (actorToken), extraVolumes.

The argument is this chart's root context (NOTES.txt uses them so), or, from a
parent chart that has tokex as a dependency, a dict with the tokex values and
the release:

  # parent Chart.yaml
  dependencies:
    - name: tokex
      version: 0.1.0
      repository: file://../tokex          # or wherever the chart lives

  # parent values.yaml
  tokex:
    mode: sidecar                          # the subchart renders its ConfigMap only
    image: { repository: registry.example.com/platform/tokex, tag: 0.1.0 }
    config: |
      ...                                  # upstreams http://127.0.0.1:<app port>

  # parent templates/deployment.yaml, in the pod spec
  {{- $tokex := dict "Values" .Values.tokex "Release" .Release }}
      securityContext:
        fsGroup: 65532                     # tokex (uid 65532) reads the Secret and token files
      initContainers:
        {{- include "tokex.sidecarContainer" $tokex | nindent 8 }}
      containers:
        - name: app                        # listens on 127.0.0.1:<app port> only
          ...
      volumes:
        {{- include "tokex.sidecarVolumes" $tokex | nindent 8 }}

The dict may also carry "Chart" (a map with Name and AppVersion); without it
the chart name is "tokex" (set fullnameOverride in tokex's values if you
alias the dependency) and image.tag must be set. tests/deploy/parent-chart is
a complete, tested example.
*/}}

{{/*
The context the helpers expect (Values, Release, Chart), from either kind of
argument. Named templates return text, so each caller builds it with:
  {{- $ctx := dict "Values" .Values "Release" .Release "Chart" (include "tokex.sidecarChart" . | fromYaml) }}
*/}}
{{- define "tokex.sidecarChart" -}}
{{- if hasKey . "Chart" -}}
{{- toYaml (dict "Name" .Chart.Name "AppVersion" .Chart.AppVersion) -}}
{{- else -}}
{{- toYaml (dict "Name" "tokex" "AppVersion" "") -}}
{{- end -}}
{{- end }}

{{/* A probe of the values with the edge's port name "admin" renamed to the sidecar's. */}}
{{- define "tokex.sidecarProbe" -}}
{{- $p := deepCopy . -}}
{{- if and (hasKey $p "httpGet") (eq (toString (get $p.httpGet "port")) "admin") -}}
{{- $_ := set $p.httpGet "port" "tokex-admin" -}}
{{- end -}}
{{- toYaml $p -}}
{{- end }}

{{- define "tokex.sidecarContainer" -}}
{{- $ctx := dict "Values" .Values "Release" .Release "Chart" (include "tokex.sidecarChart" . | fromYaml) -}}
{{- $v := $ctx.Values -}}
- name: {{ $v.sidecar.containerName }}
  image: {{ include "tokex.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.sidecar.native }}
  restartPolicy: Always                   # a native sidecar: goes under initContainers
  {{- end }}
  args: ["run", "-c", "/etc/tokex/config.yaml"]
  ports:
    - name: tokex-http
      containerPort: {{ int $v.containerPorts.http }}
      protocol: TCP
    - name: tokex-admin
      containerPort: {{ int $v.containerPorts.admin }}
      protocol: TCP
  env:
    {{- include "tokex.env" $ctx | nindent 4 }}
  {{- with $v.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.sidecar.startupProbe }}
  startupProbe:
    {{- include "tokex.sidecarProbe" . | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- include "tokex.sidecarProbe" . | nindent 4 }}
  {{- end }}
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- include "tokex.sidecarProbe" . | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- /* The pod's securityContext is the application's: tokex brings its own uid and seccomp profile. */}}
    {{- mergeOverwrite (dict "runAsUser" 65532 "runAsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault")) (deepCopy $v.securityContext) | toYaml | nindent 4 }}
  volumeMounts:
    {{- include "tokex.volumeMounts" $ctx | nindent 4 }}
{{- end }}

{{- define "tokex.sidecarVolumes" -}}
{{- $ctx := dict "Values" .Values "Release" .Release "Chart" (include "tokex.sidecarChart" . | fromYaml) -}}
{{- include "tokex.volumes" $ctx }}
{{- end }}
