{{/* The chart name, or nameOverride. */}}
{{- define "tether-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object names: fullnameOverride, or <release>-<chart> (the release name alone when it contains the chart name). */}}
{{- define "tether-relay.fullname" -}}
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

{{- define "tether-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tether-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/part-of: tether
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tether-relay.serviceAccountName" -}}
{{- default (include "tether-relay.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "tether-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the API's certificate, or nothing when the relay's CA signs it. */}}
{{- define "tether-relay.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else if .Values.tls.certManager.issuerRef }}
{{- printf "%s-api-tls" (include "tether-relay.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tether-relay.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (int .Values.drainTimeoutSeconds) 15 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "tether-relay.validate" -}}
{{- if .Values.storage.etcd.endpoints }}
{{- fail "storage.etcd.endpoints: etcd is not supported yet, leave storage.etcd.endpoints empty (the relay has only its embedded store)" }}
{{- end }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.issuerRef }}
{{- fail "tls.existingSecret and tls.certManager.issuerRef exclude each other: set one" }}
{{- end }}
{{- $grace := int (include "tether-relay.terminationGracePeriodSeconds" .) }}
{{- if le $grace (int .Values.drainTimeoutSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than drainTimeoutSeconds (%d): Kubernetes kills the relay when the grace period ends, cutting the drain short" $grace (int .Values.drainTimeoutSeconds)) }}
{{- end }}
{{- end }}
