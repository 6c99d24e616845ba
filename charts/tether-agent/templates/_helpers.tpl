{{/* The chart name, or nameOverride. */}}
{{- define "tether-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's object names: fullnameOverride, or <release>-<chart> (the release name alone when it contains the chart name). */}}
{{- define "tether-agent.fullname" -}}
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

{{- define "tether-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tether-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: tether
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tether-agent.serviceAccountName" -}}
{{- default (include "tether-agent.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* ClusterRole names are cluster-wide: the namespace keeps two releases of the same name apart. */}}
{{- define "tether-agent.clusterRoleName" -}}
{{- printf "%s-%s-impersonator" .Release.Namespace (include "tether-agent.fullname" .) }}
{{- end }}

{{- define "tether-agent.credentialSecretName" -}}
{{- default (printf "%s-credential" (include "tether-agent.fullname" .)) .Values.credentialSecretName }}
{{- end }}

{{/* The Secret holding the join token, or nothing when there is none. */}}
{{- define "tether-agent.joinTokenSecretName" -}}
{{- if .Values.existingJoinTokenSecret }}
{{- .Values.existingJoinTokenSecret }}
{{- else if .Values.joinToken }}
{{- printf "%s-join-token" (include "tether-agent.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tether-agent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port in an https URL, or 443. */}}
{{- define "tether-agent.relayURLPort" -}}
{{- $host := (urlParse .Values.relay.url).host }}
{{- $port := regexFind ":[0-9]+$" $host | trimPrefix ":" }}
{{- default "443" $port }}
{{- end }}

{{/* The port of relay.agentAddr, or 8444. */}}
{{- define "tether-agent.relayAgentPort" -}}
{{- $port := regexFind ":[0-9]+$" .Values.relay.agentAddr | trimPrefix ":" }}
{{- default "8444" $port }}
{{- end }}

{{/* A size as the binaries read it (262144, 256Ki, 4Mi, 4MiB), in bytes. The schema has checked its form. */}}
{{- define "tether-agent.bytes" -}}
{{- $s := trimSuffix "B" . }}
{{- $unit := regexFind "(Ki|Mi|Gi|Ti)$" $s }}
{{- /* Base 10, as the binaries read it: int64 would take a leading 0 for octal. */}}
{{- $n := regexReplaceAll "^0+([0-9])" (trimSuffix $unit $s) "${1}" | int64 }}
{{- $perUnit := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $unit }}
{{- mul $n $perUnit }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "tether-agent.validate" -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.networkPolicy.enabled (not .Values.networkPolicy.metricsFrom) }}
{{- fail "metrics.serviceMonitor.enabled with networkPolicy.enabled: list your Prometheus pods in networkPolicy.metricsFrom, or the NetworkPolicy keeps them from scraping the agent" }}
{{- end }}
{{- with .Values.streams.window }}
{{- $window := include "tether-agent.bytes" . | int64 }}
{{- if lt $window (int64 262144) }}
{{- fail (printf "streams.window %s: want at least 256Ki, yamux's smallest stream window" .) }}
{{- end }}
{{- if gt $window (int64 1073741824) }}
{{- fail (printf "streams.window %s: want at most 1Gi" .) }}
{{- end }}
{{- end }}
{{- if and .Values.joinToken .Values.existingJoinTokenSecret }}
{{- fail "joinToken and existingJoinTokenSecret exclude each other: set one" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.relay.cidrs) (not .Values.networkPolicy.egressProxy.cidrs) }}
{{- fail "networkPolicy.enabled needs networkPolicy.relay.cidrs (the relay's addresses), or networkPolicy.egressProxy.cidrs when the agent reaches the relay through egress.httpsProxy" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.egressProxy.cidrs (not .Values.networkPolicy.egressProxy.ports) }}
{{- fail "networkPolicy.egressProxy.cidrs needs networkPolicy.egressProxy.ports (the egress proxy's ports)" }}
{{- end }}
{{- end }}

{{/* The PromQL label matchers of this release's series: metrics.prometheusRule.selector, or what the ServiceMonitor produces. */}}
{{- define "tether-agent.metricsSelector" -}}
{{- default (printf "job=%q,namespace=%q" (printf "%s-metrics" (include "tether-agent.fullname" .)) .Release.Namespace) .Values.metrics.prometheusRule.selector }}
{{- end }}
