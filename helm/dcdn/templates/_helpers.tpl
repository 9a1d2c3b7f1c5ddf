{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "dcdn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's objects: `<release>-operator` unless overridden. */}}
{{- define "dcdn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dcdn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the operator pods. Never change them: a Deployment's selector is immutable. */}}
{{- define "dcdn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcdn.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dcdn.labels" -}}
helm.sh/chart: {{ include "dcdn.chart" . }}
{{ include "dcdn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dcdn
{{- end -}}

{{- define "dcdn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dcdn.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dcdn.leaseName" -}}
{{- default (include "dcdn.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: the digest wins; an empty tag is appVersion. */}}
{{- define "dcdn.imageRef" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "dcdn.operatorImage" -}}
{{- include "dcdn.imageRef" (list .Values.image .) -}}
{{- end -}}

{{- define "dcdn.nodeImage" -}}
{{- include "dcdn.imageRef" (list .Values.nodeImage .) -}}
{{- end -}}

{{/* The DcdnCluster made by `cluster:`. */}}
{{- define "dcdn.clusterName" -}}
{{- default .Release.Name .Values.cluster.name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The operator's own URL inside the cluster (helm test, NOTES). */}}
{{- define "dcdn.operatorURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "dcdn.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}

{{/* Labels every DCDN node pod carries (set by the operator). */}}
{{- define "dcdn.nodePodSelector" -}}
app.kubernetes.io/name: dcdn
app.kubernetes.io/managed-by: dcdn-operator
{{- end -}}

