{{/* Names, labels and the pieces every pod shares. */}}

{{- define "dockyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dockyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "dockyard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "dockyard.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. Call with (dict "top" $ "component" "x"). */}}
{{- define "dockyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dockyard.name" .top }}
app.kubernetes.io/instance: {{ .top.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dockyard.labels" -}}
{{ include "dockyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .top.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .top.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .top.Chart.Name .top.Chart.Version }}
{{- end -}}

{{- define "dockyard.image" -}}
{{- $repo := required "image.repository is required: dockyard's image (runc, qemu-user-static, the dockyard package)" .Values.image.repository -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dockyard.rayCluster" -}}{{ include "dockyard.fullname" . }}{{- end -}}

{{/* KubeRay names the head's Service <RayCluster>-head-svc. */}}
{{- define "dockyard.headAddress" -}}
{{- printf "%s-head-svc.%s.svc:%v" (include "dockyard.rayCluster" .) .Release.Namespace .Values.head.gcsPort -}}
{{- end -}}

{{- define "dockyard.endpointName" -}}{{ include "dockyard.fullname" . }}-endpoint{{- end -}}

{{- define "dockyard.endpointScheme" -}}
{{- if .Values.endpoint.tls.existingSecret -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{- define "dockyard.advertiseUrl" -}}
{{- if .Values.endpoint.advertiseUrl -}}
{{- .Values.endpoint.advertiseUrl -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%v" (include "dockyard.endpointScheme" .) (include "dockyard.endpointName" .) .Release.Namespace .Values.endpoint.service.port -}}
{{- end -}}
{{- end -}}

{{/* The Secrets' names: the user's existing ones, else the chart's. */}}
{{- define "dockyard.rayTokenSecret" -}}
{{- default (printf "%s-ray-token" (include "dockyard.fullname" .)) .Values.rayToken.existingSecret -}}
{{- end -}}

{{- define "dockyard.endpointTokenSecret" -}}
{{- default (printf "%s-endpoint-token" (include "dockyard.fullname" .)) .Values.endpoint.token.existingSecret -}}
{{- end -}}

{{/* Whether S3 credentials come from a Secret (an existing one, or the chart's). */}}
{{- define "dockyard.s3CredentialsSecret" -}}
{{- $c := .Values.cache.s3.credentials -}}
{{- if and .Values.cache.s3.enabled $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else if and .Values.cache.s3.enabled (or $c.accessKeyId $c.secretAccessKey) -}}
{{- printf "%s-s3-credentials" (include "dockyard.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* A token: the value given, else the one the release's Secret already holds, else a new one. */}}
{{- define "dockyard.token" -}}
{{- $existing := lookup "v1" "Secret" .top.Release.Namespace .name -}}
{{- if .value -}}
{{- .value -}}
{{- else if and $existing (hasKey (default (dict) $existing.data) .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 64 -}}
{{- end -}}
{{- end -}}

{{- define "dockyard.qemu" -}}
{{- $names := dict "amd64" "qemu-x86_64" "arm64" "qemu-aarch64" -}}
{{- index $names . -}}
{{- end -}}

{{/* The arches a Ray pod emulates: its own list; with binfmt on and none given, the other arch. */}}
{{- define "dockyard.emulate" -}}
{{- $emulate := .group.emulate | default list -}}
{{- if and .top.Values.binfmt.enabled (not $emulate) -}}
{{- $emulate = without (list "amd64" "arm64") .arch -}}
{{- end -}}
{{- join "," $emulate -}}
{{- end -}}

{{/*
A Ray pod template (head or worker group): the command starting its dockyard node, the
cluster's token, the local store at the root, the privileges, the arch's node selector and
the optional binfmt set-up.  Call with (dict "top" $ "group" GROUP "arch" ARCH "role" "head"|"worker" "name" NAME).
*/}}
{{- define "dockyard.rayPodTemplate" -}}
{{- $top := .top -}}
{{- $v := $top.Values -}}
{{- $emulate := include "dockyard.emulate" . -}}
metadata:
  labels:
    {{- include "dockyard.labels" (dict "top" $top "component" .name) | nindent 4 }}
    dockyard.dev/arch: {{ .arch }}
  {{- with .group.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  nodeSelector:
    {{- toYaml (merge (dict "kubernetes.io/arch" .arch) (.group.nodeSelector | default dict)) | nindent 4 }}
  {{- with .group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: 60
  {{- if and $v.binfmt.enabled $emulate }}
  initContainers:
    - name: binfmt
      image: {{ default (include "dockyard.image" $top) $v.binfmt.image }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["/bin/sh", "/opt/dockyard/scripts/binfmt.sh"]
      env:
        - name: QEMU_HANDLERS
          value: {{ without (splitList "," $emulate) "" | join " " | replace "amd64" "qemu-x86_64" | replace "arm64" "qemu-aarch64" | quote }}
      securityContext:
        privileged: true  # binfmt_misc is host-wide: registering a handler needs it
      volumeMounts:
        - name: scripts
          mountPath: /opt/dockyard/scripts
          readOnly: true
  {{- end }}
  containers:
    - name: {{ if eq .role "head" }}ray-head{{ else }}ray-worker{{ end }}
      image: {{ include "dockyard.image" $top }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["/bin/sh", "/opt/dockyard/scripts/node.sh"]
      env:
        - name: DOCKYARD_ROOT
          value: {{ $v.root | quote }}
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: RAY_AUTH_MODE
          value: token
        - name: RAY_AUTH_TOKEN_PATH
          value: /etc/dockyard/ray-token/{{ $v.rayToken.key }}
        - name: DOCKYARD_NODE_ROLE
          value: {{ .role }}
        - name: DOCKYARD_HEAD_ADDRESS
          value: {{ include "dockyard.headAddress" $top | quote }}
        - name: DOCKYARD_GCS_PORT
          value: {{ $v.head.gcsPort | quote }}
        - name: DOCKYARD_HEALTH_CHECK_MS
          value: {{ $v.head.healthCheckMs | toString | quote }}
        - name: DOCKYARD_ARCH
          value: {{ .arch }}
        - name: DOCKYARD_EMULATE
          value: {{ $emulate | quote }}
        - name: DOCKYARD_SLOTS
          value: {{ .group.slots | toString | quote }}
        - name: DOCKYARD_OBJECT_STORE
          value: {{ .group.objectStoreMemory | toString | quote }}
        {{- with include "dockyard.s3Env" $top }}{{ . | nindent 8 }}{{ end }}
      {{- if eq .role "head" }}
      ports:
        - name: gcs-server
          containerPort: {{ $v.head.gcsPort }}
          protocol: TCP
      {{- end }}
      # Our own probes: KubeRay adds probes of Ray's dashboard agent to a Ray container
      # that has none, and dockyard's nodes run without the dashboard.
      livenessProbe:
        exec:
          command: ["dockyard", "node", "ls", "--format", "json", "--timeout", "10"]
        initialDelaySeconds: 60
        periodSeconds: 30
        timeoutSeconds: 25
        failureThreshold: 4
      readinessProbe:
        exec:
          command: ["dockyard", "node", "ls", "--format", "json", "--timeout", "10"]
        initialDelaySeconds: 10
        periodSeconds: 15
        timeoutSeconds: 25
        failureThreshold: 2
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      {{- with .group.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: store
          mountPath: {{ $v.root }}
        - name: ray-token
          mountPath: /etc/dockyard/ray-token
          readOnly: true
        - name: scripts
          mountPath: /opt/dockyard/scripts
          readOnly: true
  volumes:
    - name: store
      {{- include "dockyard.storeVolume" $top | nindent 6 }}
    - name: ray-token
      secret:
        secretName: {{ include "dockyard.rayTokenSecret" $top }}
        defaultMode: 0400
    - name: scripts
      configMap:
        name: {{ include "dockyard.fullname" $top }}-scripts
{{- end -}}

{{- define "dockyard.storeVolume" -}}
{{- $s := .Values.storage -}}
{{- if eq $s.type "emptyDir" -}}
emptyDir:
  {{- with $s.emptyDir.sizeLimit }}
  sizeLimit: {{ . }}
  {{- end }}
  {{- with $s.emptyDir.medium }}
  medium: {{ . }}
  {{- end }}
{{- else if eq $s.type "hostPath" -}}
hostPath:
  path: {{ required "storage.hostPath.path is required with storage.type=hostPath" $s.hostPath.path }}
  type: {{ $s.hostPath.type }}
{{- else if eq $s.type "ephemeral" -}}
ephemeral:
  volumeClaimTemplate:
    metadata:
      labels:
        {{- include "dockyard.selectorLabels" (dict "top" . "component" "store") | nindent 8 }}
    spec:
      accessModes:
        {{- toYaml $s.ephemeral.accessModes | nindent 8 }}
      {{- with $s.ephemeral.storageClassName }}
      storageClassName: {{ . }}
      {{- end }}
      resources:
        requests:
          storage: {{ $s.ephemeral.size }}
{{- else -}}
{{- fail (printf "storage.type must be emptyDir, hostPath or ephemeral, not %q" $s.type) -}}
{{- end -}}
{{- end -}}

{{/* The S3 credentials as AWS_* variables, from their Secret (none: boto3's own chain). */}}
{{- define "dockyard.s3Env" -}}
{{- $secret := include "dockyard.s3CredentialsSecret" . -}}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.cache.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.cache.s3.credentials.secretAccessKeyKey }}
{{- end }}
{{- if and .Values.cache.s3.enabled .Values.cache.s3.region }}
- name: AWS_REGION
  value: {{ .Values.cache.s3.region | quote }}
{{- end }}
{{- end -}}

{{/* `dockyard serve --cache` of the shared S3 cache. */}}
{{- define "dockyard.s3Cache" -}}
{{- $s := .Values.cache.s3 -}}
{{- $attrs := list "type=s3" (printf "bucket=%s" (required "cache.s3.bucket is required with cache.s3.enabled" $s.bucket)) -}}
{{- with $s.region }}{{ $attrs = append $attrs (printf "region=%s" .) }}{{ end -}}
{{- with $s.prefix }}{{ $attrs = append $attrs (printf "prefix=%s" .) }}{{ end -}}
{{- with $s.endpointUrl }}{{ $attrs = append $attrs (printf "endpoint_url=%s" .) }}{{ end -}}
{{- if $s.usePathStyle }}{{ $attrs = append $attrs "use_path_style=true" }}{{ end -}}
{{- join "," $attrs -}}
{{- end -}}

{{/* The arches /readyz waits for: the value, else the enabled worker groups' arches. */}}
{{- define "dockyard.readyArches" -}}
{{- $arches := .Values.endpoint.readyArches | default list -}}
{{- if not $arches -}}
{{- range $arch := list "amd64" "arm64" -}}
{{- if (index $.Values.workers $arch).enabled -}}{{- $arches = append $arches $arch -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if has "any" $arches -}}{{- else -}}{{- join "," $arches -}}{{- end -}}
{{- end -}}
