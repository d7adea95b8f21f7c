{{/*
Helpers of the compartment-auditd chart.

Every template here takes the chart's own context (.Values, .Release, .Chart,
.Capabilities). Another chart that lists this one as a dependency passes it as
`(index $.Subcharts "compartment-auditd")`, so the sidecar it renders is exactly the
one the standalone Deployment renders.
*/}}

{{- define "compartment-auditd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "compartment-auditd.fullname" -}}
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

{{- define "compartment-auditd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "compartment-auditd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "compartment-auditd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "compartment-auditd.labels" -}}
helm.sh/chart: {{ include "compartment-auditd.chart" . }}
{{ include "compartment-auditd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: audit
{{- end }}

{{/* Labels that select the pods running the daemon, in either mode. */}}
{{- define "compartment-auditd.podSelector" -}}
{{- if eq .Values.mode "sidecar" }}
{{- if not .Values.sidecar.selectorLabels }}
{{- fail "sidecar.selectorLabels: set the labels of the pod that includes the sidecar (needed by the Service and the PodMonitor in sidecar mode)" }}
{{- end }}
{{- toYaml .Values.sidecar.selectorLabels }}
{{- else }}
{{- include "compartment-auditd.selectorLabels" . }}
{{- end }}
{{- end }}

{{- define "compartment-auditd.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}{{ $repo = printf "%s/%s" .Values.image.registry $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "compartment-auditd.databaseSecret" -}}
{{- default (printf "%s-database" (include "compartment-auditd.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "compartment-auditd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "compartment-auditd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "compartment-auditd.sinkPersistent" -}}
{{- if and .Values.sink.enabled (ne .Values.sink.volume.type "emptyDir") }}true{{ end }}
{{- end }}

{{- define "compartment-auditd.sinkClaimName" -}}
{{- default (printf "%s-sink" (include "compartment-auditd.fullname" .)) .Values.sink.volume.persistentVolumeClaim.claimName }}
{{- end }}

{{/*
The TOML settings file; its checksum goes into the pod annotations. Written here
rather than with `toToml`: Helm reads every number in a values file as a float, and
`toToml` would write `retention_files = 30.0`, which an integer setting refuses.
*/}}
{{- define "compartment-auditd.configToml" -}}
# Rendered by the compartment-auditd chart from .Values.config.
{{- include "compartment-auditd.tomlTable" (dict "path" "" "map" (.Values.config | default dict)) }}
{{- end }}

{{- define "compartment-auditd.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "compartment-auditd.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "compartment-auditd.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: %v cannot be written as a TOML value (strings, numbers, booleans, lists and maps only)" .) }}
{{- end }}
{{- end }}

{{/* Scalars of a table first, then its sub-tables as [dotted.headers]. */}}
{{- define "compartment-auditd.tomlTable" -}}
{{- $path := .path }}
{{- range $k, $v := .map }}
{{- if not (kindIs "map" $v) }}
{{ include "compartment-auditd.tomlKey" $k }} = {{ include "compartment-auditd.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .map }}
{{- if kindIs "map" $v }}
{{- $p := include "compartment-auditd.tomlKey" $k }}
{{- if $path }}{{ $p = printf "%s.%s" $path $p }}{{ end }}

[{{ $p }}]
{{- include "compartment-auditd.tomlTable" (dict "path" $p "map" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment of the daemon and of `migrate`. */}}
{{- define "compartment-auditd.env" -}}
- name: COMPARTMENT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "compartment-auditd.databaseSecret" . }}
      key: {{ .Values.database.secretKey }}
{{- include "compartment-auditd.databaseEnv" . }}
- name: COMPARTMENT_AUDIT_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.logLevel }}
- name: COMPARTMENT_AUDIT_LOG_LEVEL
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Where the database's secret files are mounted. */}}
{{- define "compartment-auditd.tlsDir" -}}/etc/compartment-auditd/tls{{- end }}
{{- define "compartment-auditd.passwordDir" -}}/etc/compartment-auditd/database{{- end }}

{{/* TLS and password-file variables (paths of the mounts below, never contents). */}}
{{- define "compartment-auditd.databaseEnv" -}}
{{- $tls := .Values.database.tls }}
{{- $dir := include "compartment-auditd.tlsDir" . }}
{{- with $tls.sslmode }}
- name: COMPARTMENT_DATABASE_SSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if $tls.rootCert.system }}
- name: COMPARTMENT_DATABASE_SSLROOTCERT
  value: "system"
{{- else if or $tls.rootCert.secretName $tls.rootCert.configMapName }}
- name: COMPARTMENT_DATABASE_SSLROOTCERT
  value: {{ printf "%s/ca/%s" $dir $tls.rootCert.key | quote }}
{{- end }}
{{- if $tls.clientCert.secretName }}
- name: COMPARTMENT_DATABASE_SSLCERT
  value: {{ printf "%s/client/%s" $dir $tls.clientCert.certKey | quote }}
- name: COMPARTMENT_DATABASE_SSLKEY
  value: {{ printf "%s/client/%s" $dir $tls.clientCert.keyKey | quote }}
{{- end }}
{{- with .Values.database.passwordSecret.name }}
- name: COMPARTMENT_DATABASE_PASSWORD_FILE
  value: {{ printf "%s/%s" (include "compartment-auditd.passwordDir" $) $.Values.database.passwordSecret.key | quote }}
{{- end }}
{{- end }}

{{/* Mounts of the database's secret files (daemon and migrate). */}}
{{- define "compartment-auditd.databaseMounts" -}}
{{- $tls := .Values.database.tls }}
{{- if and (not $tls.rootCert.system) (or $tls.rootCert.secretName $tls.rootCert.configMapName) }}
- name: compartment-auditd-db-ca
  mountPath: {{ include "compartment-auditd.tlsDir" . }}/ca
  readOnly: true
{{- end }}
{{- if $tls.clientCert.secretName }}
- name: compartment-auditd-db-client-cert
  mountPath: {{ include "compartment-auditd.tlsDir" . }}/client
  readOnly: true
{{- end }}
{{- if .Values.database.passwordSecret.name }}
- name: compartment-auditd-db-password
  mountPath: {{ include "compartment-auditd.passwordDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Volumes behind those mounts. Directory mounts (no subPath), so the kubelet's
updates of a rotated Secret reach the files. */}}
{{- define "compartment-auditd.databaseVolumes" -}}
{{- $tls := .Values.database.tls }}
{{- if not $tls.rootCert.system }}
{{- if $tls.rootCert.secretName }}
- name: compartment-auditd-db-ca
  secret:
    secretName: {{ $tls.rootCert.secretName }}
    items:
      - key: {{ $tls.rootCert.key }}
        path: {{ $tls.rootCert.key }}
{{- else if $tls.rootCert.configMapName }}
- name: compartment-auditd-db-ca
  configMap:
    name: {{ $tls.rootCert.configMapName }}
    items:
      - key: {{ $tls.rootCert.key }}
        path: {{ $tls.rootCert.key }}
{{- end }}
{{- end }}
{{- with $tls.clientCert.secretName }}
- name: compartment-auditd-db-client-cert
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $tls.clientCert.certKey }}
        path: {{ $tls.clientCert.certKey }}
      - key: {{ $tls.clientCert.keyKey }}
        path: {{ $tls.clientCert.keyKey }}
{{- end }}
{{- with .Values.database.passwordSecret.name }}
- name: compartment-auditd-db-password
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.database.passwordSecret.key }}
        path: {{ $.Values.database.passwordSecret.key }}
{{- end }}
{{- end }}

{{- define "compartment-auditd.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* The daemon's container (without the native-sidecar restartPolicy). */}}
{{- define "compartment-auditd.container" -}}
name: compartment-auditd
image: {{ include "compartment-auditd.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - --config
  - /etc/compartment/auditd.toml
  - run
env:
  {{- include "compartment-auditd.env" . | nindent 2 }}
  # 0.0.0.0 rather than the loopback default, so that the kubelet's probes and
  # Prometheus reach /healthz, /readyz and /metrics.
  - name: COMPARTMENT_AUDIT_HTTP_ADDR
    value: {{ printf "0.0.0.0:%d" (int .Values.http.port) | quote }}
  - name: COMPARTMENT_AUDIT_FILE_SINK_ENABLED
    value: {{ .Values.sink.enabled | quote }}
  {{- if .Values.sink.enabled }}
  - name: COMPARTMENT_AUDIT_FILE_SINK_DIR
    value: {{ printf "%s/%s" (trimSuffix "/" .Values.sink.mountPath) .Values.sink.subPath | quote }}
  - name: COMPARTMENT_AUDIT_FILE_SINK_ALLOW_GROUP_BITS
    value: {{ .Values.sink.allowGroupBits | quote }}
  # Names this replica of the sink group in logs, /readyz and the lease row
  # (docs/replicas.md): the pod's name, so that every replica of an N-replica
  # Deployment is told apart without any setting.
  - name: COMPARTMENT_AUDIT_REPLICA_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- end }}
ports:
  - name: audit-http
    containerPort: {{ .Values.http.port }}
    protocol: TCP
{{- if .Values.probes.startup.enabled }}
startupProbe:
  httpGet:
    path: /healthz
    port: audit-http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
{{- end }}
{{- if .Values.probes.liveness.enabled }}
livenessProbe:
  httpGet:
    path: /healthz
    port: audit-http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
{{- end }}
{{- if .Values.probes.readiness.enabled }}
readinessProbe:
  httpGet:
    path: /readyz
    port: audit-http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
{{- end }}
securityContext:
  {{- include "compartment-auditd.securityContext" . | nindent 2 }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: compartment-auditd-config
    mountPath: /etc/compartment
    readOnly: true
  {{- if .Values.sink.enabled }}
  - name: compartment-auditd-sink
    mountPath: {{ .Values.sink.mountPath }}
  {{- end }}
  {{- include "compartment-auditd.databaseMounts" . | nindent 2 }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* `compartment-auditd migrate`, as an init container or the hook Job's container. */}}
{{- define "compartment-auditd.migrateContainer" -}}
name: compartment-auditd-migrate
image: {{ include "compartment-auditd.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args:
  - migrate
env:
  {{- include "compartment-auditd.env" . | nindent 2 }}
{{- with (include "compartment-auditd.databaseMounts" . | trim) }}
volumeMounts:
  {{- . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "compartment-auditd.securityContext" . | nindent 2 }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "compartment-auditd.collectorContainer" -}}
name: {{ .Values.collector.name }}
image: {{ printf "%s:%s" .Values.collector.image.repository .Values.collector.image.tag }}
imagePullPolicy: {{ .Values.collector.image.pullPolicy }}
{{- with .Values.collector.command }}
command:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.collector.args }}
args:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.collector.env }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.collector.securityContext | nindent 2 }}
{{- with .Values.collector.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: compartment-auditd-sink
    mountPath: {{ .Values.collector.mountPath }}
    readOnly: true
  {{- if .Values.collector.config }}
  - name: compartment-auditd-collector-config
    mountPath: {{ .Values.collector.configMountPath }}
    readOnly: true
  {{- end }}
  {{- if .Values.collector.dataMountPath }}
  - name: compartment-auditd-collector-data
    mountPath: {{ .Values.collector.dataMountPath }}
  {{- end }}
  {{- with .Values.collector.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "compartment-auditd.validate" -}}
{{- $ca := .Values.database.tls.rootCert }}
{{- if gt (len (compact (list (ternary "system" "" $ca.system) $ca.secretName $ca.configMapName))) 1 }}
{{- fail "database.tls.rootCert: set one of system, secretName and configMapName" }}
{{- end }}
{{- if and .Values.collector.enabled (not .Values.sink.enabled) }}
{{- fail "collector.enabled needs sink.enabled: the collector reads the sink volume" }}
{{- end }}
{{- if and .Values.nativeSidecar (not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "nativeSidecar needs Kubernetes 1.29 or later (init containers with restartPolicy: Always); this cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (eq .Values.mode "standalone") (include "compartment-auditd.sinkPersistent" .) (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 with a persistent sink volume: two daemons must never share a sink directory; use sink.volume.type=emptyDir or one replica" }}
{{- end }}
{{- end }}

{{/*
PUBLIC: the containers to add to a pod's `containers:` list: the daemon (unless it
runs as a native sidecar) and the optional log collector.
*/}}
{{- define "compartment-auditd.sidecar" -}}
{{- include "compartment-auditd.validate" . }}
{{- if not .Values.nativeSidecar }}
- {{ include "compartment-auditd.container" . | indent 2 | trim }}
{{- end }}
{{- if .Values.collector.enabled }}
- {{ include "compartment-auditd.collectorContainer" . | indent 2 | trim }}
{{- end }}
{{- end }}

{{/*
PUBLIC: the containers to add to a pod's `initContainers:` list: `migrate` (when
migrate.mode=initContainer) and the daemon as a native sidecar (when nativeSidecar).
Empty otherwise.
*/}}
{{- define "compartment-auditd.sidecar.initContainers" -}}
{{- if and .Values.migrate.enabled (eq .Values.migrate.mode "initContainer") }}
- {{ include "compartment-auditd.migrateContainer" . | indent 2 | trim }}
{{- end }}
{{- if .Values.nativeSidecar }}
- {{ include "compartment-auditd.container" . | indent 2 | trim }}
  # A native sidecar: started before the pod's containers, stopped after them.
  restartPolicy: Always
{{- end }}
{{- end }}

{{/* PUBLIC: the volumes to add to the pod's `volumes:` list. */}}
{{- define "compartment-auditd.sidecar.volumes" -}}
- name: compartment-auditd-config
  configMap:
    name: {{ include "compartment-auditd.fullname" . }}
{{- include "compartment-auditd.databaseVolumes" . }}
{{- if .Values.sink.enabled }}
- name: compartment-auditd-sink
  {{- $v := .Values.sink.volume }}
  {{- if eq $v.type "emptyDir" }}
  emptyDir:
    {{- with $v.emptyDir.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with $v.emptyDir.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
  {{- else if eq $v.type "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ include "compartment-auditd.sinkClaimName" . }}
  {{- else if eq $v.type "hostPath" }}
  hostPath:
    path: {{ $v.hostPath.path }}
    type: {{ $v.hostPath.type }}
  {{- end }}
{{- end }}
{{- if and .Values.collector.enabled .Values.collector.config }}
- name: compartment-auditd-collector-config
  configMap:
    name: {{ include "compartment-auditd.fullname" . }}-collector
{{- end }}
{{- if and .Values.collector.enabled .Values.collector.dataMountPath }}
- name: compartment-auditd-collector-data
  emptyDir: {}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
PUBLIC: pod annotations: checksums of the rendered configuration, so that a change
rolls the pods (rollOnConfigChange; the collector's own configuration always).
*/}}
{{- define "compartment-auditd.sidecar.podAnnotations" -}}
{{- if .Values.rollOnConfigChange }}
checksum/compartment-auditd-config: {{ include "compartment-auditd.configToml" . | sha256sum }}
{{- end }}
{{- if and .Values.collector.enabled .Values.collector.config }}
checksum/compartment-auditd-collector-config: {{ toYaml .Values.collector.config | sha256sum }}
{{- end }}
{{- end }}
