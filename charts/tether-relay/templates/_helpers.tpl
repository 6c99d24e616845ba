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

{{/* A size as the binaries read it (262144, 256Ki, 4Mi, 4MiB), in bytes. The schema has checked its form. */}}
{{- define "tether-relay.bytes" -}}
{{- $s := trimSuffix "B" . }}
{{- $unit := regexFind "(Ki|Mi|Gi|Ti)$" $s }}
{{- /* Base 10, as the binaries read it: int64 would take a leading 0 for octal. */}}
{{- $n := regexReplaceAll "^0+([0-9])" (trimSuffix $unit $s) "${1}" | int64 }}
{{- $perUnit := get (dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $unit }}
{{- mul $n $perUnit }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "tether-relay.validate" -}}
{{- $e := .Values.store.etcd }}
{{- if eq .Values.store.type "etcd" }}
{{- if not $e.endpoints }}
{{- fail "store.type etcd needs store.etcd.endpoints: the client URLs of the etcd members (https://etcd-0:2379, ...)" }}
{{- end }}
{{- if not $e.keyEncryptionKey.existingSecret }}
{{- fail "store.type etcd needs store.etcd.keyEncryptionKey.existingSecret: a Secret holding the 32-byte key that encrypts the CA key of the relay in etcd (head -c 32 /dev/urandom > kek; kubectl create secret generic NAME --from-file=kek=kek)" }}
{{- end }}
{{- if has $e.keyEncryptionKey.key $e.keyEncryptionKey.previousKeys }}
{{- fail (printf "store.etcd.keyEncryptionKey.previousKeys names %s, the key that encrypts (store.etcd.keyEncryptionKey.key): list only older keys" $e.keyEncryptionKey.key) }}
{{- end }}
{{- with $e.tls }}
{{- if .existingSecret }}
{{- if ne (empty .certKey) (empty .keyKey) }}
{{- fail (printf "store.etcd.tls.certKey %q and keyKey %q go together: set both for a client certificate, or neither" .certKey .keyKey) }}
{{- end }}
{{- if and (empty .certKey) (empty .caKey) }}
{{- fail (printf "store.etcd.tls.existingSecret %s with no certKey, keyKey or caKey: name the Secret's keys, or leave existingSecret empty" .existingSecret) }}
{{- end }}
{{- $https := false }}
{{- range $e.endpoints }}
{{- if hasPrefix "https://" . }}
{{- $https = true }}
{{- end }}
{{- end }}
{{- if not $https }}
{{- fail (printf "store.etcd.tls.existingSecret %s, but no endpoint in store.etcd.endpoints is https: the relay would not use the certificate (give https:// endpoints)" .existingSecret) }}
{{- end }}
{{- end }}
{{- end }}
{{- $port := int .Values.peer.port }}
{{- if has $port (list 8443 8444 8081) }}
{{- fail (printf "peer.port %d is one of the relay's other ports (8443 API, 8444 agents, 8081 health): pick another, e.g. 8445" $port) }}
{{- end }}
{{- else }}
{{- if gt (int .Values.replicas) 1 }}
{{- fail (printf "replicas %d needs store.type etcd: with bbolt one process at a time may open the bbolt file; set store.type etcd with store.etcd.endpoints and store.etcd.keyEncryptionKey.existingSecret, or replicas 1" (int .Values.replicas)) }}
{{- end }}
{{- if or $e.endpoints $e.keyEncryptionKey.existingSecret $e.tls.existingSecret }}
{{- fail "store.etcd is set, but store.type is bbolt: set store.type etcd to use it (or leave store.etcd empty)" }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicas) 1) (ge (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicas)) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable %d must be less than replicas %d: a node drain could stop every relay" (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.issuerRef }}
{{- fail "tls.existingSecret and tls.certManager.issuerRef exclude each other: set one" }}
{{- end }}
{{- $minWindow := 262144 }}
{{- with .Values.streams.window }}
{{- $window := include "tether-relay.bytes" . | int64 }}
{{- if lt $window (int64 $minWindow) }}
{{- fail (printf "streams.window %s: want at least 256Ki, yamux's smallest stream window" .) }}
{{- end }}
{{- if gt $window (int64 1073741824) }}
{{- fail (printf "streams.window %s: want at most 1Gi" .) }}
{{- end }}
{{- end }}
{{- with .Values.streams.memory }}
{{- $memory := include "tether-relay.bytes" . | int64 }}
{{- if $.Values.streams.window }}
{{- if lt $memory (include "tether-relay.bytes" $.Values.streams.window | int64) }}
{{- fail (printf "streams.memory %s is less than one stream window (streams.window %s): no stream could open" . $.Values.streams.window) }}
{{- end }}
{{- else if lt $memory (int64 $minWindow) }}
{{- fail (printf "streams.memory %s is less than the smallest stream window (256Ki): no stream could open" .) }}
{{- end }}
{{- end }}
{{- $login := .Values.login }}
{{- if and $login.issuer (not $login.clientID) }}
{{- fail "login.issuer needs login.clientID (the public client callers log in as)" }}
{{- end }}
{{- if and $login.clientID (not $login.issuer) }}
{{- fail "login.clientID needs login.issuer (the OpenID provider callers log in at)" }}
{{- end }}
{{- if $login.issuer }}
{{- $issuers := list }}
{{- $audiences := list }}
{{- range .Values.authenticationConfig.jwt }}
{{- $issuers = append $issuers .issuer.url }}
{{- if eq .issuer.url $login.issuer }}
{{- $audiences = concat $audiences (default list .issuer.audiences) }}
{{- end }}
{{- end }}
{{- if not (has $login.issuer $issuers) }}
{{- fail (printf "login.issuer %s is not an issuer of authenticationConfig (%s): the relay would refuse the tokens of that login" $login.issuer (join ", " $issuers)) }}
{{- end }}
{{- if not (has $login.clientID $audiences) }}
{{- fail (printf "login.clientID %s is not among the audiences of issuer %s in authenticationConfig (%s): the relay would refuse the tokens of that login" $login.clientID $login.issuer (join ", " $audiences)) }}
{{- end }}
{{- end }}
{{- $grace := int (include "tether-relay.terminationGracePeriodSeconds" .) }}
{{- if le $grace (int .Values.drainTimeoutSeconds) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than drainTimeoutSeconds (%d): Kubernetes kills the relay when the grace period ends, cutting the drain short" $grace (int .Values.drainTimeoutSeconds)) }}
{{- end }}
{{- end }}

{{/* The PromQL label matchers of this release's series: metrics.prometheusRule.selector, or what the ServiceMonitor produces. */}}
{{- define "tether-relay.metricsSelector" -}}
{{- default (printf "job=%q,namespace=%q" (printf "%s-metrics" (include "tether-relay.fullname" .)) .Release.Namespace) .Values.metrics.prometheusRule.selector }}
{{- end }}

{{/* With store.type etcd: the store flags, global flags of tether-relay (before serve). */}}
{{- define "tether-relay.etcdArgs" -}}
{{- $e := .Values.store.etcd -}}
- "--store=etcd"
{{- range $e.endpoints }}
- {{ printf "--etcd-endpoints=%s" . | quote }}
{{- end }}
{{- with $e.prefix }}
- {{ printf "--etcd-prefix=%s" . | quote }}
{{- end }}
{{- with $e.tls }}
{{- if .existingSecret }}
{{- if .certKey }}
- {{ printf "--etcd-cert=/etc/tether/etcd/%s" .certKey | quote }}
- {{ printf "--etcd-key=/etc/tether/etcd/%s" .keyKey | quote }}
{{- end }}
{{- with .caKey }}
- {{ printf "--etcd-ca=/etc/tether/etcd/%s" . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The first encrypts; the others only decrypt (rotation). */}}
{{- range (prepend $e.keyEncryptionKey.previousKeys $e.keyEncryptionKey.key) }}
- {{ printf "--ca-key-encryption-key-file=/etc/tether/kek/%s" . | quote }}
{{- end }}
{{- end }}

{{/* The command that runs the cluster commands in a relay pod: through its admin socket, or, when no relay answers there yet, on the store itself. */}}
{{- define "tether-relay.execCommand" -}}
{{- $args := list "--data" "/var/lib/tether-relay/relay.db" }}
{{- if eq .Values.store.type "etcd" }}
{{- range (include "tether-relay.etcdArgs" . | fromYamlArray) }}
{{- $args = append $args . }}
{{- end }}
{{- end }}
{{- printf "kubectl -n %s exec deploy/%s -- tether-relay %s" .Release.Namespace (include "tether-relay.fullname" .) (join " " $args) }}
{{- end }}
