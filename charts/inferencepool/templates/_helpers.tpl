{{/*
Names. The EPP objects are "<release>-epp" (release truncated to 40 characters, like upstream), the
InferencePool is the release name.
*/}}
{{- define "epp.name" -}}
{{- $base := .Release.Name | default "default-pool" | lower | trim | trunc 40 | trimSuffix "-" -}}
{{- printf "%s-epp" $base -}}
{{- end -}}

{{- define "epp.poolName" -}}
{{- .Release.Name -}}
{{- end -}}

{{- define "epp.labels" -}}
app.kubernetes.io/name: {{ include "epp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: endpoint-picker
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "epp.selectorLabels" -}}
inferencepool: {{ include "epp.name" . }}
{{- end -}}

{{- define "epp.modeLabels" -}}
inference.networking.k8s.io/igw-mode: inferencepool
{{- end -}}

{{/* Cast to int: values files give float64, and gt float64 int fails (upstream bug #1630). 0 stays 0. */}}
{{- define "epp.replicas" -}}
{{- $r := .Values.inferenceExtension.replicas -}}
{{- if kindIs "invalid" $r -}}1{{- else -}}{{- int $r -}}{{- end -}}
{{- end -}}

{{/* inferenceExtension.ha.mode: active-passive (the default) or active-active. */}}
{{- define "epp.haMode" -}}
{{- dig "ha" "mode" "active-passive" (.Values.inferenceExtension | default dict) -}}
{{- end -}}

{{/* "true" for active-active HA: every replica routes and shares its routing state over the peer link. */}}
{{- define "epp.activeActive" -}}
{{- if eq (include "epp.haMode" .) "active-active" -}}true{{- end -}}
{{- end -}}

{{/*
"true" for active-passive HA with leader election: more than one replica, or the user's own
ha-enable-leader-election flag (then the lease Role and the Recreate strategy are needed all the same).
Never in active-active mode (no leader; a leader-election flag there is a render error, epp.validate).
*/}}
{{- define "epp.ha" -}}
{{- if not (include "epp.activeActive" .) -}}
{{- $flag := include "epp.leaderElectionFlag" . -}}
{{- if or (gt (include "epp.replicas" . | int) 1) $flag -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when the user's flags turn leader election on (ha-enable-leader-election: true). */}}
{{- define "epp.leaderElectionFlag" -}}
{{- $flag := get (include "epp.userFlags" . | fromYaml) "ha-enable-leader-election" | toString | lower -}}
{{- if has $flag (list "true" "1" "t" "yes" "on") -}}true{{- end -}}
{{- end -}}

{{/* "true" when the replicas should prefer different nodes: leader election, or active-active. */}}
{{- define "epp.spread" -}}
{{- if or (include "epp.ha" .) (include "epp.activeActive" .) -}}true{{- end -}}
{{- end -}}

{{/*
The Secret holding the active-active peer channel's shared secret, as YAML {name, key, create}; name ""
= none (ha.secret.create false and no ha.secret.name: the peer channel is plain TCP, the EPP warns).
An ha.secret.name is an existing Secret the chart never creates; else the chart creates <name>-ha.
*/}}
{{- define "epp.haSecret" -}}
{{- $s := dig "ha" "secret" dict (.Values.inferenceExtension | default dict) -}}
{{- $key := $s.key | default "secret" -}}
{{- if $s.name -}}
name: {{ $s.name | quote }}
key: {{ $key | quote }}
create: false
{{- else if ternary true $s.create (kindIs "invalid" $s.create) -}}
name: {{ printf "%s-ha" (include "epp.name" .) | quote }}
key: {{ $key | quote }}
create: true
{{- else -}}
name: ""
key: {{ $key | quote }}
create: false
{{- end -}}
{{- end -}}

{{- define "epp.haSecretDir" -}}/var/run/secrets/epp-ha{{- end -}}

{{/* The chart's selector labels as "k=v,k=v" (sorted): --ha-peer-selector, how replicas find each other. */}}
{{- define "epp.peerSelector" -}}
{{- $pairs := list -}}
{{- range $k, $v := (include "epp.selectorLabels" . | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (toString $v)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "epp.image" -}}
{{- $img := .Values.inferenceExtension.image -}}
{{- $tag := $img.tag | default .Chart.AppVersion | toString -}}
{{- if $img.hub -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $img.hub) ($img.name | default "epp") $tag -}}
{{- else if $img.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $img.registry) $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "epp.modelServerType" -}}
{{- .Values.inferencePool.modelServerType | default "vllm" | lower -}}
{{- end -}}

{{- define "epp.provider" -}}
{{- .Values.provider.name | default "none" | lower -}}
{{- end -}}

{{/*
Format one flag value for "--key=value": integral numbers print as integers (values files give float64,
and %v would print 1e+06), lists join with commas, everything else prints as is.
*/}}
{{- define "epp.flagValue" -}}
{{- $v := . -}}
{{- if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
{{- $parts := list -}}
{{- range $v -}}{{- $parts = append $parts (include "epp.flagValue" .) -}}{{- end -}}
{{- join "," $parts -}}
{{- else if kindIs "map" $v -}}
{{- fail (printf "inferenceExtension.flags: a flag value must be a string, number, boolean or list, got a map: %v" $v) -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end -}}

{{/*
The user's flags as a YAML map "name: value-text". Accepts the current map form and upstream v1.0's list of
{name, value}; leading dashes in names are dropped, and upstream's misspelt chart flag
"has-enable-leader-election" (PR #1337) is read as ha-enable-leader-election.
*/}}
{{- define "epp.userFlags" -}}
{{- $flags := .Values.inferenceExtension.flags | default dict -}}
{{- $out := dict -}}
{{- if kindIs "slice" $flags -}}
{{- range $flags -}}
{{- if not (hasKey . "name") -}}
{{- fail (printf "inferenceExtension.flags: list entries need a name: %v" .) -}}
{{- end -}}
{{- $value := ternary true .value (not (hasKey . "value")) -}}
{{- $_ := set $out (toString .name) (include "epp.flagValue" $value) -}}
{{- end -}}
{{- else -}}
{{- range $k, $v := $flags -}}
{{- $_ := set $out $k (include "epp.flagValue" $v) -}}
{{- end -}}
{{- end -}}
{{- $norm := dict -}}
{{- range $k, $v := $out -}}
{{- $name := $k | trimPrefix "-" | trimPrefix "-" -}}
{{- if eq $name "has-enable-leader-election" -}}{{- $name = "ha-enable-leader-election" -}}{{- end -}}
{{- if empty $name -}}
{{- fail "inferenceExtension.flags: empty flag name" -}}
{{- end -}}
{{- if hasKey $norm $name -}}
{{- fail (printf "inferenceExtension.flags: flag %q is given twice" $name) -}}
{{- end -}}
{{- $_ := set $norm $name $v -}}
{{- end -}}
{{- toYaml $norm -}}
{{- end -}}

{{/* The ports the EPP container listens on (a flag in inferenceExtension.flags overrides). */}}
{{- define "epp.ports" -}}
{{- $user := include "epp.userFlags" . | fromYaml -}}
grpc: {{ get $user "grpc-port" | default (.Values.inferenceExtension.extProcPort | default 9002) | int }}
health: {{ get $user "grpc-health-port" | default 9003 | int }}
metrics: {{ get $user "metrics-port" | default (.Values.inferenceExtension.metricsPort | default 9090) | int }}
ha: {{ get $user "ha-port" | default (dig "ha" "peerPort" 9004 (.Values.inferenceExtension | default dict)) | int }}
{{- end -}}

{{/* "true" when the chart's token Secret protects /metrics (--metrics-bearer-token-file). */}}
{{- define "epp.metricsAuth" -}}
{{- $prom := .Values.inferenceExtension.monitoring.prometheus -}}
{{- if and $prom.enabled $prom.auth.enabled (ne (include "epp.provider" .) "gke") (not (include "epp.metricsTokenReview" .)) -}}true{{- end -}}
{{- end -}}

{{/*
"true" with monitoring.prometheus.auth.tokenReview: the EPP checks scrapers' tokens itself (TokenReview and
SubjectAccessReview, its --metrics-endpoint-auth default) and its ServiceAccount is bound to
system:auth-delegator. Independent of monitoring.prometheus.enabled (any scraper is checked the same way).
*/}}
{{- define "epp.metricsTokenReview" -}}
{{- if dig "monitoring" "prometheus" "auth" "tokenReview" false (.Values.inferenceExtension | default dict) -}}true{{- end -}}
{{- end -}}

{{- define "epp.metricsTokenDir" -}}/var/run/secrets/epp-metrics-auth{{- end -}}

{{/*
The EPP's --workers: inferenceExtension.workers, else the container's CPU request rounded up ("4", 4,
"2500m" -> 3), so the decision processes and the CPUs the pod asks for agree; "" without either (the EPP
then counts the CPUs it may use).
*/}}
{{- define "epp.workers" -}}
{{- $ie := .Values.inferenceExtension -}}
{{- if $ie.workers -}}
{{- $ie.workers | int -}}
{{- else -}}
{{- $cpu := toString (dig "requests" "cpu" "" ($ie.resources | default dict)) -}}
{{- if $cpu -}}
{{- $cores := 0.0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $cores = divf (trimSuffix "m" $cpu | float64) 1000 -}}
{{- else -}}
{{- $cores = $cpu | float64 -}}
{{- end -}}
{{- max 1 (ceil $cores | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The EPP's command-line flags as an ordered list of [name, value] pairs (value "" = a bare flag).
Chart-managed flags come first; a flag the user also sets in inferenceExtension.flags is left to the user's
value, so every flag appears exactly once.
*/}}
{{- define "epp.args" -}}
{{- $user := include "epp.userFlags" . | fromYaml -}}
{{- $ports := include "epp.ports" . | fromYaml -}}
{{- $managed := list -}}
{{- $managed = append $managed (list "pool-name" (include "epp.poolName" .)) -}}
{{- $managed = append $managed (list "pool-namespace" .Release.Namespace) -}}
{{- $managed = append $managed (list "pool-group" (splitList "/" .Values.inferencePool.apiVersion | first)) -}}
{{- $managed = append $managed (list "config-file" (printf "/config/%s" .Values.inferenceExtension.pluginsConfigFile)) -}}
{{- $managed = append $managed (list "model-server-type" (include "epp.modelServerType" .)) -}}
{{- $managed = append $managed (list "log-format" (.Values.inferenceExtension.logFormat | default "json")) -}}
{{- /* as upstream's chart: tracing on exactly when tracing.enabled (the OTEL_* variables come with it) */ -}}
{{- $tracing := .Values.inferenceExtension.tracing | default dict -}}
{{- $managed = append $managed (list "tracing" (ternary "true" "false" (eq (toString $tracing.enabled) "true"))) -}}
{{- if ne (int $ports.grpc) 9002 -}}
{{- $managed = append $managed (list "grpc-port" (toString $ports.grpc)) -}}
{{- end -}}
{{- if ne (int $ports.metrics) 9090 -}}
{{- $managed = append $managed (list "metrics-port" (toString $ports.metrics)) -}}
{{- end -}}
{{- if include "epp.ha" . -}}
{{- $managed = append $managed (list "ha-enable-leader-election" "true") -}}
{{- end -}}
{{- if include "epp.activeActive" . -}}
{{- $managed = append $managed (list "ha-mode" "active-active") -}}
{{- $managed = append $managed (list "ha-port" (toString $ports.ha)) -}}
{{- /* --peers and --ha-peer-selector exclude each other: a user's static --peers replaces the selector. */ -}}
{{- if not (hasKey $user "peers") -}}
{{- $managed = append $managed (list "ha-peer-selector" (include "epp.peerSelector" .)) -}}
{{- end -}}
{{- if (include "epp.haSecret" . | fromYaml).name -}}
{{- $managed = append $managed (list "ha-secret-file" (printf "%s/secret" (include "epp.haSecretDir" .))) -}}
{{- end -}}
{{- end -}}
{{- with include "epp.workers" . -}}
{{- $managed = append $managed (list "workers" .) -}}
{{- end -}}
{{- if include "epp.metricsAuth" . -}}
{{- $managed = append $managed (list "metrics-bearer-token-file" (printf "%s/token" (include "epp.metricsTokenDir" .))) -}}
{{- else if not (include "epp.metricsTokenReview" .) -}}
{{- /* no RBAC for TokenReviews without auth.tokenReview: /metrics stays open, as upstream's chart has it */ -}}
{{- $managed = append $managed (list "metrics-endpoint-auth" "false") -}}
{{- end -}}
{{- $args := list -}}
{{- range $managed -}}
{{- if not (hasKey $user (index . 0)) -}}
{{- $args = append $args (printf "--%s=%s" (index . 0) (index . 1)) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := $user -}}
{{- $args = append $args (printf "--%s=%s" $k (toString $v)) -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
The built-in EndpointPickerConfig (file default-plugins.yaml): upstream v1.5's default scorers and weights
(queue 2, kv-cache utilization 2, prefix cache 3) with the metrics data source of the values.
*/}}
{{- define "epp.defaultPluginsConfig" -}}
{{- $mds := .Values.inferenceExtension.metricsDataSource | default dict -}}
{{- $type := include "epp.modelServerType" . -}}
{{- $parser := .Values.inferencePool.parser | default "" -}}
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: {{ $mds.scheme | default "http" | quote }}
    path: {{ $mds.path | default "/metrics" | quote }}
    insecureSkipVerify: {{ ternary true $mds.insecureSkipVerify (kindIs "invalid" $mds.insecureSkipVerify) }}
- type: core-metrics-extractor
{{- if ne $type "vllm" }}
  parameters:
    defaultEngine: {{ $type | quote }}
{{- end }}
{{- if $parser }}
- type: {{ $parser | quote }}
{{- end }}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
{{- if $parser }}
parser:
  pluginRef: {{ $parser | quote }}
{{- end }}
{{- end -}}

{{/* The pool's target ports as a YAML list of {number}; upstream v1.0's targetPortNumber still works. */}}
{{- define "epp.targetPorts" -}}
{{- $pool := .Values.inferencePool -}}
{{- $ports := list -}}
{{- if $pool.targetPortNumber -}}
{{- $ports = list (dict "number" (int $pool.targetPortNumber)) -}}
{{- else -}}
{{- range $pool.targetPorts -}}
{{- $ports = append $ports (dict "number" (int .number)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $ports -}}
{{- end -}}
