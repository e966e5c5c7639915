{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object. */}}
{{- define "sluice.fullname" -}}
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

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluice.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the rules. */}}
{{- define "sluice.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "sluice.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{/* The Secret holding key-secret / jwt-secret, or "" when there is none. */}}
{{- define "sluice.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- printf "%s-secrets" (include "sluice.fullname" .) }}
{{- end }}
{{- end }}

{{/* The server certificate's Secret, or "" without TLS. */}}
{{- define "sluice.tlsSecret" -}}
{{- if .Values.tls.enabled }}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "sluice.fullname" .) }}
{{- else }}
{{- fail "tls.enabled: set tls.existingSecret (a kubernetes.io/tls Secret) or tls.certManager.enabled" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sluice.clientCASecret" -}}
{{- default (include "sluice.tlsSecret" .) .Values.tls.clientCA.existingSecret }}
{{- end }}

{{/* Redis nodes, checked: at least one, each host:port. */}}
{{- define "sluice.redisNodes" -}}
{{- $r := .Values.redis }}
{{- if not $r.nodes }}
{{- fail (printf "redis.mode %s: set redis.nodes (host:port, at least one) or redis.url" $r.mode) }}
{{- end }}
{{- range $r.nodes }}
{{- if not (regexMatch "^[^:/?&@]+:[0-9]{1,5}$" .) }}
{{- fail (printf "redis.nodes: %q is not host:port" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/* fred's URL for redis.mode / redis.nodes / redis.tls, or "" for none. */}}
{{- define "sluice.redisUrl" -}}
{{- $r := .Values.redis }}
{{- if eq $r.mode "none" }}
{{- else if $r.url }}
{{- if regexMatch "^[a-z-]+://[^/?]*:[^/?]*@" $r.url }}
{{- fail "redis.url: put the password in redis.existingSecret, not in the URL" }}
{{- end }}
{{- $r.url }}
{{- else }}
{{- include "sluice.redisNodes" . }}
{{- $s := ternary "s" "" $r.tls.enabled }}
{{- $first := first $r.nodes }}
{{- $rest := rest $r.nodes }}
{{- if eq $r.mode "standalone" }}
{{- if gt (len $r.nodes) 1 }}
{{- fail "redis.mode standalone: give exactly one node (use cluster or sentinel for more)" }}
{{- end }}
{{- printf "redis%s://%s" $s $first }}
{{- else if eq $r.mode "cluster" }}
{{- $q := list }}
{{- range $rest }}{{ $q = append $q (printf "node=%s" .) }}{{ end }}
{{- printf "redis%s-cluster://%s" $s $first }}{{ if $q }}?{{ join "&" $q }}{{ end }}
{{- else if eq $r.mode "sentinel" }}
{{- $q := list (printf "sentinelServiceName=%s" $r.sentinel.masterName) }}
{{- range $rest }}{{ $q = append $q (printf "node=%s" .) }}{{ end }}
{{- printf "redis%s-sentinel://%s?%s" $s $first (join "&" $q) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Seconds the pod needs to stop: preStop sleep + delay + drain + 10 (flush and close, 5 s each). */}}
{{- define "sluice.gracePeriod" -}}
{{- $l := .Values.lifecycle }}
{{- $need := add $l.preStopSleepSeconds $l.shutdownDelaySeconds $l.drainTimeoutSeconds 10 }}
{{- if kindIs "invalid" $l.terminationGracePeriodSeconds }}
{{- $need }}
{{- else if lt (int $l.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds: %v is shorter than preStopSleepSeconds + shutdownDelaySeconds + drainTimeoutSeconds + 10 (the usage flush and the key store close, 5 s each) = %v; the kubelet would kill sluice mid-drain" $l.terminationGracePeriodSeconds $need) }}
{{- else }}
{{- $l.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Refuse combinations the schema cannot see. */}}
{{- define "sluice.validate" -}}
{{- $v := .Values }}
{{- $sqlite := and (not $v.database.url) (not $v.database.existingSecret) }}
{{- if and $sqlite (or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled) }}
{{- fail "database: more than one replica needs a shared key store: set database.url or database.existingSecret (PostgreSQL); SQLite keys are per pod" }}
{{- end }}
{{- if and $v.database.url $v.database.existingSecret }}
{{- fail "database: set database.url or database.existingSecret, not both" }}
{{- end }}
{{- if and $v.database.url (regexMatch "^[a-z]+://[^/?]*:[^/?]*@" $v.database.url) }}
{{- fail "database.url: put a URL with a password in database.existingSecret, not in values" }}
{{- end }}
{{- if and (not $sqlite) (not (include "sluice.secretName" .)) }}
{{- fail "secrets: PostgreSQL needs the key-hashing secret: set secrets.existingSecret (or secrets.create with secrets.keySecret)" }}
{{- end }}
{{- if and $v.secrets.create $v.secrets.existingSecret }}
{{- fail "secrets: set secrets.existingSecret or secrets.create, not both" }}
{{- end }}
{{- if and $v.secrets.create (lt (len $v.secrets.keySecret) 32) }}
{{- fail "secrets.keySecret: at least 32 bytes (secrets.create)" }}
{{- end }}
{{- if and $v.secrets.create $v.secrets.jwtSecret (lt (len $v.secrets.jwtSecret) 32) }}
{{- fail "secrets.jwtSecret: at least 32 bytes" }}
{{- end }}
{{- if and $v.tls.clientCA.enabled (not $v.tls.enabled) }}
{{- fail "tls.clientCA.enabled (mTLS) needs tls.enabled" }}
{{- end }}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name: required with tls.certManager.enabled" }}
{{- end }}
{{- if and $v.redis.tls.caSecret (not $v.redis.tls.enabled) }}
{{- fail "redis.tls.caSecret needs redis.tls.enabled" }}
{{- end }}
{{- if and $v.redis.tls.clientCertSecret (not $v.redis.tls.enabled) }}
{{- fail "redis.tls.clientCertSecret needs redis.tls.enabled" }}
{{- end }}
{{- if and $v.admin.expose (not $v.admin.enabled) }}
{{- fail "admin.expose needs admin.enabled" }}
{{- end }}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- $_ := include "sluice.gracePeriod" . }}
{{- $_ := include "sluice.redisUrl" . }}
{{- $_ := include "sluice.tlsSecret" . }}
{{- end }}
