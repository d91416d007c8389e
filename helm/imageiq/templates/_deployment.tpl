{{/*
One Deployment of the service: the stable track (deployment.yaml) or the canary
(deployment-canary.yaml). Call with (dict "root" $ "track" "stable"|"canary").
*/}}
{{- define "imageiq.deployment" -}}
{{- $root := .root -}}
{{- $track := .track -}}
{{- $values := $root.Values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "imageiq.trackName" . }}
  labels:
    {{- include "imageiq.labels" $root | nindent 4 }}
    app.kubernetes.io/component: server
    imageiq.dev/track: {{ $track }}
spec:
  {{- if eq $track "canary" }}
  replicas: {{ include "imageiq.canaryReplicas" $root }}
  {{- else if not $values.autoscaling.enabled }}
  replicas: {{ include "imageiq.stableReplicas" $root }}
  {{- end }}
  revisionHistoryLimit: {{ $values.revisionHistoryLimit }}
  # Zero-downtime rollouts: a new pod must pass /readyz (model loaded and warmed) before an
  # old one goes.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: {{ $values.rollout.maxSurge }}
  minReadySeconds: {{ $values.rollout.minReadySeconds }}
  progressDeadlineSeconds: {{ $values.rollout.progressDeadlineSeconds }}
  selector:
    matchLabels:
      {{- include "imageiq.selectorLabels" $root | nindent 6 }}
      imageiq.dev/track: {{ $track }}
  template:
    metadata:
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "imageiq.labels" $root | nindent 8 }}
        app.kubernetes.io/component: server
        imageiq.dev/track: {{ $track }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      serviceAccountName: {{ include "imageiq.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $values.serviceAccount.automount }}
      {{- with $values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $values.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- if include "imageiq.migrateInPod" $root }}
      # `imageiq db upgrade` before the server starts: SQLite in this pod's data volume, or the
      # database of the Secret when migrations.mode is initContainer.
      initContainers:
        - name: migrate
          image: {{ include "imageiq.image" . }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: {{ toJson $values.migrations.args }}
          workingDir: {{ $values.bento.sourceDir }}
          envFrom:
            - configMapRef:
                name: {{ include "imageiq.fullname" $root }}
          {{- with include "imageiq.secretEnv" $root | trim }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $values.migrations.resources | nindent 12 }}
          volumeMounts:
            {{- include "imageiq.volumeMounts" $root | nindent 12 }}
      {{- end }}
      containers:
        - name: {{ $root.Chart.Name }}
          image: {{ include "imageiq.image" . }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          # The bento image's entrypoint runs `bentoml serve <args> $BENTO_PATH`.
          args:
            - serve
            - --host
            - 0.0.0.0
            - --port
            - {{ $values.containerPort | quote }}
          envFrom:
            - configMapRef:
                name: {{ include "imageiq.fullname" $root }}
          {{- $env := include "imageiq.containerEnv" . | trim }}
          {{- with $env }}
          env:
            {{- . | nindent 12 }}
          {{- end }}
          ports:
            - name: http
              containerPort: {{ $values.containerPort }}
              protocol: TCP
            {{- with $values.metrics.port }}
            # Prometheus metrics (IMAGEIQ_METRICS_PORT), apart from the API.
            - name: metrics
              containerPort: {{ . }}
              protocol: TCP
            {{- end }}
          # /livez: the process answers; /readyz: every served model is loaded and warmed up.
          startupProbe:
            httpGet:
              path: {{ $values.probes.startup.path }}
              port: http
            periodSeconds: {{ $values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $values.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: {{ $values.probes.liveness.path }}
              port: http
            periodSeconds: {{ $values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: {{ $values.probes.readiness.path }}
              port: http
            periodSeconds: {{ $values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $values.probes.readiness.failureThreshold }}
          lifecycle:
            # Keep serving while the endpoint removal reaches every kube-proxy and ingress.
            preStop:
              exec:
                command: ["sleep", "{{ $values.rollout.preStopSleepSeconds }}"]
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          volumeMounts:
            {{- include "imageiq.volumeMounts" $root | nindent 12 }}
      volumes:
        - name: data
          {{- if $values.dataVolume.persistence.enabled }}
          persistentVolumeClaim:
            claimName: {{ include "imageiq.dataClaim" $root }}
          {{- else }}
          emptyDir:
            sizeLimit: {{ $values.dataVolume.sizeLimit }}
          {{- end }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $values.tmpVolume.sizeLimit }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $values.shmVolume.sizeLimit }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $values.topologySpread.enabled }}
      # Spread replicas over zones and nodes (best effort: a full zone never blocks a rollout).
      topologySpreadConstraints:
        {{- range $values.topologySpread.topologyKeys }}
        - maxSkew: {{ $values.topologySpread.maxSkew }}
          topologyKey: {{ . }}
          whenUnsatisfiable: {{ $values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "imageiq.selectorLabels" $root | nindent 14 }}
              imageiq.dev/track: {{ $track }}
          matchLabelKeys:
            - pod-template-hash
        {{- end }}
      {{- end }}
{{- end }}

{{/*
Writable paths under the read-only root filesystem: the data dir (SQLite, images, spool),
/tmp (BentoML's sockets and BENTOML_HOME, torch's caches, the model process's socket) and
/dev/shm (the front workers' shared-memory slots, with config.modelProcess).
*/}}
{{- define "imageiq.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.dataVolume.mountPath }}
- name: tmp
  mountPath: /tmp
- name: shm
  mountPath: /dev/shm
{{- end }}

{{/*
A container's env: Secret references, the track's own settings (the canary's canary.config,
the workers' worker.config: they override the ConfigMap's), extraEnv. Tracks: "stable",
"canary", "worker".
*/}}
{{- define "imageiq.containerEnv" -}}
{{- include "imageiq.secretEnv" .root }}
{{- $own := dict }}
{{- if eq .track "canary" }}{{ $own = .root.Values.canary.config }}{{ end }}
{{- if eq .track "worker" }}{{ $own = .root.Values.worker.config }}{{ end }}
{{- range $key, $value := $own }}
- name: IMAGEIQ_{{ $key | snakecase | upper }}
  value: {{ include "imageiq.envValue" $value | quote }}
{{- end }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
