{{/*
Checks the schema cannot express, with messages that say what to set. Included once from deployment.yaml.
*/}}
{{- define "epp.validate" -}}
{{- $pool := .Values.inferencePool | default dict -}}
{{- $servers := $pool.modelServers | default dict -}}
{{- if not $servers.matchLabels -}}
{{- fail "inferencePool.modelServers.matchLabels is required and must not be empty: set the labels of your model-server pods, e.g. --set inferencePool.modelServers.matchLabels.app=vllm-llama3-8b-instruct" -}}
{{- end -}}
{{- if and (eq ($pool.modelServerProtocol | default "http") "grpc") (not $pool.parser) -}}
{{- fail "inferencePool.modelServerProtocol grpc: this EPP has no gRPC request parser (upstream's vllmgrpc-parser); set inferencePool.parser to a parser plugin that reads your requests, or use modelServerProtocol http" -}}
{{- end -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $files := list "default-plugins.yaml" -}}
{{- range $name, $_ := ($ie.pluginsCustomConfig | default dict) -}}
{{- $files = append $files $name -}}
{{- end -}}
{{- if not (has $ie.pluginsConfigFile $files) -}}
{{- fail (printf "inferenceExtension.pluginsConfigFile %q is not in the config ConfigMap: use default-plugins.yaml or add it under inferenceExtension.pluginsCustomConfig (files: %s)" $ie.pluginsConfigFile (join ", " $files)) -}}
{{- end -}}
{{- if and $ie.sidecar $ie.sidecar.enabled -}}
{{- fail "inferenceExtension.sidecar.enabled: this chart does not run a sidecar proxy; set it to false" -}}
{{- end -}}
{{- if and $ie.latencyPredictor $ie.latencyPredictor.enabled -}}
{{- fail "inferenceExtension.latencyPredictor.enabled: the latency predictor is not supported by this EPP; set it to false" -}}
{{- end -}}
{{- if not (has (include "epp.provider" .) (list "none" "gke" "istio")) -}}
{{- fail (printf "provider.name %q: use none, gke or istio" .Values.provider.name) -}}
{{- end -}}
{{- $mode := include "epp.haMode" . -}}
{{- if not (has $mode (list "active-passive" "active-active")) -}}
{{- fail (printf "inferenceExtension.ha.mode %q: use active-passive (one leader routes, leader election with more than one replica) or active-active (every replica routes and they share their routing state)" $mode) -}}
{{- end -}}
{{- $userFlags := include "epp.userFlags" . | fromYaml -}}
{{- if and (eq $mode "active-active") (include "epp.leaderElectionFlag" .) -}}
{{- fail "inferenceExtension.ha.mode active-active and the flag ha-enable-leader-election: true exclude each other: every active-active replica routes and no lease is taken; remove inferenceExtension.flags.ha-enable-leader-election, or set inferenceExtension.ha.mode: active-passive for a leader" -}}
{{- end -}}
{{- if and (hasKey $userFlags "ha-mode") (ne (toString (get $userFlags "ha-mode")) $mode) -}}
{{- fail (printf "inferenceExtension.flags.ha-mode %q disagrees with inferenceExtension.ha.mode %q: set the mode with inferenceExtension.ha.mode only (it also sets the peer flags, the Secret, the RBAC and the strategy)" (toString (get $userFlags "ha-mode")) $mode) -}}
{{- end -}}
{{- if include "epp.metricsTokenReview" . -}}
{{- if eq (toString (dig "monitoring" "prometheus" "auth" "enabled" true $ie)) "false" -}}
{{- fail "inferenceExtension.monitoring.prometheus.auth.tokenReview needs auth.enabled: true (auth.enabled: false leaves /metrics open); set auth.enabled: true to check scrapers' tokens with TokenReviews, or tokenReview: false" -}}
{{- end -}}
{{- if hasKey $userFlags "metrics-bearer-token-file" -}}
{{- fail "inferenceExtension.monitoring.prometheus.auth.tokenReview and the flag metrics-bearer-token-file exclude each other: the token file wins in the EPP and no TokenReview is ever made; remove inferenceExtension.flags.metrics-bearer-token-file, or set tokenReview: false" -}}
{{- end -}}
{{- if has (toString (get $userFlags "metrics-endpoint-auth") | lower) (list "false" "0" "f" "no" "off") -}}
{{- fail "inferenceExtension.monitoring.prometheus.auth.tokenReview and the flag metrics-endpoint-auth: false exclude each other: the EPP would not check tokens; remove inferenceExtension.flags.metrics-endpoint-auth, or set tokenReview: false" -}}
{{- end -}}
{{- end -}}
{{- $ports := list -}}
{{- range (include "epp.targetPorts" . | fromYamlArray) -}}
{{- if has (int .number) $ports -}}
{{- fail (printf "inferencePool.targetPorts: port %d is listed twice" (int .number)) -}}
{{- end -}}
{{- $ports = append $ports (int .number) -}}
{{- end -}}
{{- $_ := include "epp.args" . -}}
{{- end -}}
