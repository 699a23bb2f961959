{{/* Names, labels and the values every template derives from the same way. */}}

{{- define "lgaf-train.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lgaf-train.fullname" -}}
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

{{/* Names of the objects, short enough for a Service (63) with the Job's pod suffixes. */}}
{{- define "lgaf-train.coordinator" -}}
{{- printf "%s-coordinator" (include "lgaf-train.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{- define "lgaf-train.worker" -}}
{{- printf "%s-worker" (include "lgaf-train.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{- define "lgaf-train.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "lgaf-train.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lgaf-train
{{- end }}

{{/* The selector of one component: pass (dict "root" $ "component" "coordinator"). */}}
{{- define "lgaf-train.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lgaf-train.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lgaf-train.runId" -}}
{{- default .Release.Name .Values.runId }}
{{- end }}

{{- define "lgaf-train.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lgaf-train.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Ranks per worker pod, and the job's world size (the coordinator's --workers). */}}
{{- define "lgaf-train.ranksPerPod" -}}
{{- max 1 (int .Values.gpusPerNode) }}
{{- end }}

{{- define "lgaf-train.worldSize" -}}
{{- mul (int .Values.workers) (include "lgaf-train.ranksPerPod" . | int) }}
{{- end }}

{{- define "lgaf-train.device" -}}
{{- if gt (int .Values.gpusPerNode) 0 }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{- define "lgaf-train.coordinatorUrl" -}}
{{- printf "%s://%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "lgaf-train.coordinator" .) (int .Values.coordinator.port) }}
{{- end }}

{{- define "lgaf-train.tokenSecret" -}}
{{- default (printf "%s-token" (include "lgaf-train.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "lgaf-train.tlsSecret" -}}
{{- default (printf "%s-tls" (include "lgaf-train.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "lgaf-train.s3Secret" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if or .Values.s3.accessKeyId .Values.s3.secretAccessKey }}
{{- printf "%s-s3" (include "lgaf-train.fullname" .) }}
{{- end }}
{{- end }}

{{- define "lgaf-train.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Where the Secrets and the configuration are mounted in the containers. */}}
{{- define "lgaf-train.tokenFile" -}}/var/run/lgaf/token/token{{- end }}
{{- define "lgaf-train.tlsDir" -}}/var/run/lgaf/tls{{- end }}
{{- define "lgaf-train.configFile" -}}/etc/lgaf/train.toml{{- end }}

{{/* The environment both containers share: storage, telemetry, extra variables. */}}
{{- define "lgaf-train.commonEnv" -}}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- $transfer := .Values.s3.transfer | default dict }}
{{- range $key, $variable := dict "maxRetries" "LGAF_STORE_MAX_RETRIES" "retryTimeoutSecs" "LGAF_STORE_RETRY_TIMEOUT_SECS" "backoffInitMs" "LGAF_STORE_BACKOFF_INIT_MS" "backoffMaxSecs" "LGAF_STORE_BACKOFF_MAX_SECS" "requestTimeoutSecs" "LGAF_STORE_REQUEST_TIMEOUT_SECS" "connectTimeoutSecs" "LGAF_STORE_CONNECT_TIMEOUT_SECS" "multipartThresholdBytes" "LGAF_STORE_MULTIPART_THRESHOLD_BYTES" "partSizeBytes" "LGAF_STORE_PART_SIZE_BYTES" }}
{{- if hasKey $transfer $key }}
- name: {{ $variable }}
  value: {{ int64 (index $transfer $key) | quote }}
{{- end }}
{{- end }}
- name: LGAF_LOG_FORMAT
  value: {{ .Values.telemetry.logFormat | quote }}
- name: LGAF_TRACE_STEP_EVERY
  value: {{ int64 .Values.telemetry.traceStepEvery | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.Values.telemetry.otlpProtocol | quote }}
{{- end }}
- name: NO_COLOR
  value: "1"
{{- end }}

{{- define "lgaf-train.secretVolumes" -}}
- name: token
  secret:
    secretName: {{ include "lgaf-train.tokenSecret" . }}
    defaultMode: 0440
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "lgaf-train.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "lgaf-train.secretMounts" -}}
- name: token
  mountPath: /var/run/lgaf/token
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "lgaf-train.tlsDir" . }}
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "lgaf-train.podSpecCommon" -}}
serviceAccountName: {{ include "lgaf-train.serviceAccountName" . }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
