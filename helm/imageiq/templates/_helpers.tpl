{{/*
Expand the name of the chart.
*/}}
{{- define "imageiq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most, the DNS limit). A release
name that contains the chart name is used as is.
*/}}
{{- define "imageiq.fullname" -}}
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

{{/*
Chart name and version, for the chart label.
*/}}
{{- define "imageiq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "imageiq.labels" -}}
helm.sh/chart: {{ include "imageiq.chart" . }}
{{ include "imageiq.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: every pod of the release (stable and canary), as the Service selects them.
*/}}
{{- define "imageiq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imageiq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of a track's objects: the fullname for the stable track, "<fullname>-canary" for the
canary. Call with (dict "root" $ "track" "stable").
*/}}
{{- define "imageiq.trackName" -}}
{{- if eq .track "stable" }}
{{- include "imageiq.fullname" .root }}
{{- else }}
{{- printf "%s-%s" (include "imageiq.fullname" .root | trunc 56 | trimSuffix "-") .track }}
{{- end }}
{{- end }}

{{/*
The service account to use.
*/}}
{{- define "imageiq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imageiq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image of a track: the canary's tag when it sets one, else image.tag, else appVersion.
The "retrain" track (the CronJob) and the "worker" track (the bulk-job workers) take
retrain.image's and worker.image's repository and tag where set.
*/}}
{{- define "imageiq.image" -}}
{{- $repository := .root.Values.image.repository }}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- if and (eq .track "canary") .root.Values.canary.image.tag }}
{{- $tag = .root.Values.canary.image.tag }}
{{- end }}
{{- if eq .track "retrain" }}
{{- $repository = default $repository .root.Values.retrain.image.repository }}
{{- $tag = default $tag .root.Values.retrain.image.tag }}
{{- end }}
{{- if eq .track "worker" }}
{{- $repository = default $repository .root.Values.worker.image.repository }}
{{- $tag = default $tag .root.Values.worker.image.tag }}
{{- end }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/*
Replica counts without autoscaling: the canary takes ceil(replicaCount * weight / 100) pods
(at least one) out of replicaCount, so a canary never grows the fleet.
*/}}
{{- define "imageiq.canaryReplicas" -}}
{{- $total := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $total = int .Values.autoscaling.minReplicas }}{{ end }}
{{- $n := div (add (mul $total (int .Values.canary.weight)) 99) 100 }}
{{- max 1 $n }}
{{- end }}

{{- define "imageiq.stableReplicas" -}}
{{- if .Values.canary.enabled }}
{{- max 1 (sub (int .Values.replicaCount) (int (include "imageiq.canaryReplicas" .))) }}
{{- else }}
{{- int .Values.replicaCount }}
{{- end }}
{{- end }}

{{/*
True ("true") when the chart keeps the metadata in SQLite inside each pod (no database Secret).
*/}}
{{- define "imageiq.migrateInPod" -}}
{{- if or (include "imageiq.embeddedDatabase" .) (and .Values.migrations.enabled (eq .Values.migrations.mode "initContainer")) }}true{{ end }}
{{- end }}

{{/*
True ("true") when a database Secret is set and migrations run in the pre-install/upgrade Job.
*/}}
{{- define "imageiq.migrateInJob" -}}
{{- if and .Values.migrations.enabled (eq .Values.migrations.mode "job") (not (include "imageiq.embeddedDatabase" .)) }}true{{ end }}
{{- end }}

{{/*
True ("true") when no database Secret is set: SQLite in the pod's data volume.
*/}}
{{- define "imageiq.embeddedDatabase" -}}
{{- if not .Values.secrets.database.existingSecret }}true{{ end }}
{{- end }}

{{/*
Environment from Secrets: the database URL, Redis URL, API-key pepper, the bulk-job broker's
URL and S3 credentials.
*/}}
{{- define "imageiq.secretEnv" -}}
{{- with .Values.secrets.database }}
{{- if .existingSecret }}
- name: IMAGEIQ_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.secrets.redis }}
{{- if .existingSecret }}
- name: IMAGEIQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.secrets.apiKeyPepper }}
{{- if .existingSecret }}
- name: IMAGEIQ_API_KEY_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.secrets.jobsBroker }}
{{- if .existingSecret }}
- name: IMAGEIQ_JOBS_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.secrets.s3 }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A setting as an environment variable's text: strings as they are, anything else as JSON
(numbers never in exponent form, lists as JSON arrays, which the settings accept).
*/}}
{{- define "imageiq.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
True ("true") when a track serves without API keys: config.authEnabled false, or on the
canary its own config.authEnabled (else the stable track's). Call with (dict "root" $ "track" ...).
*/}}
{{- define "imageiq.authOff" -}}
{{- $config := .root.Values.config }}
{{- if and (eq .track "canary") (hasKey .root.Values.canary.config "authEnabled") }}
{{- $config = .root.Values.canary.config }}
{{- end }}
{{- if and (hasKey $config "authEnabled") (not $config.authEnabled) }}true{{ end }}
{{- end }}

{{/*
Refuses values that would deploy an unsafe or broken fleet (helm fails with the reason):
a public Ingress in front of a track without API keys, keys without a pepper, and several
pods that would each keep their own database or stored images.
*/}}
{{- define "imageiq.refuseUnsafe" -}}
{{- $values := .Values }}
{{- $tracks := list "stable" }}
{{- if $values.canary.enabled }}{{ $tracks = append $tracks "canary" }}{{ end }}
{{- range $tracks }}
{{- $off := include "imageiq.authOff" (dict "root" $ "track" .) }}
{{- if and $off $values.ingress.enabled }}
{{- fail (printf "ingress.enabled with config.authEnabled false (%s track): the Ingress would let anyone classify, read, label and delete; turn authentication on or the Ingress off" .) }}
{{- end }}
{{- if and (not $off) (not $values.secrets.apiKeyPepper.existingSecret) }}
{{- fail "API keys (config.authEnabled) need a pepper: set secrets.apiKeyPepper.existingSecret to a Secret holding 16+ random characters (without it a copy of the database alone can test guessed keys)" }}
{{- end }}
{{- end }}
{{- if or (gt (int $values.replicaCount) 1) $values.autoscaling.enabled $values.canary.enabled }}
{{- if include "imageiq.embeddedDatabase" . }}
{{- fail "more than one pod needs a shared database: set secrets.database.existingSecret (without it each pod has its own SQLite file, keys and stored images)" }}
{{- end }}
{{- if and (not $values.config.s3Bucket) (ne (toString (default "request" $values.config.storeImages)) "never") }}
{{- fail "more than one pod needs shared image storage: set config.s3Bucket, or config.storeImages: never (without it each pod keeps the images it stores in its own volume)" }}
{{- end }}
{{- $persistence := $values.dataVolume.persistence }}
{{- if and $persistence.enabled (not $persistence.existingClaim) (not (has "ReadWriteMany" $persistence.accessModes)) }}
{{- fail "more than one pod share the data volume's claim: dataVolume.persistence.accessModes needs ReadWriteMany (or give an existingClaim that is), else the pods cannot all mount it and a replaced pod's spool is never replayed" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The claim of the data volume: the operator's, or the chart's (templates/pvc.yaml).
*/}}
{{- define "imageiq.dataClaim" -}}
{{- .Values.dataVolume.persistence.existingClaim | default (printf "%s-data" (include "imageiq.fullname" .)) }}
{{- end }}

{{/*
The egress rules of the server pods (and of the retrain runs and the bulk-job workers, which
reach the same dependencies): DNS, then each dependency the values configure (the jobs'
broker is a Redis too; S3 also for config.jobsAllowedBuckets), then networkPolicy.egress.extra.
*/}}
{{- define "imageiq.egressRules" -}}
{{- $policy := .Values.networkPolicy -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $policy.egress.dns }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.secrets.database.existingSecret }}
# PostgreSQL.
{{ include "imageiq.egressRule" $policy.egress.database }}
{{- end }}
{{- if or .Values.secrets.redis.existingSecret .Values.secrets.jobsBroker.existingSecret }}
# Redis (the cache and rate limits, the bulk-job queue).
{{ include "imageiq.egressRule" $policy.egress.redis }}
{{- end }}
{{- if or .Values.config.s3Bucket .Values.canary.config.s3Bucket .Values.config.jobsAllowedBuckets .Values.worker.config.s3Bucket }}
# S3 (stored images, models, bulk-job inputs and results).
{{ include "imageiq.egressRule" $policy.egress.s3 }}
{{- end }}
{{- with $policy.egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the retrain CronJob: "<fullname>-retrain", the fullname cut so that the names of
its Jobs ("<cronjob>-<minutes since 1970>") stay within the 63 characters of a label value.
*/}}
{{- define "imageiq.retrainName" -}}
{{- printf "%s-retrain" (include "imageiq.fullname" . | trunc 44 | trimSuffix "-") }}
{{- end }}

{{/*
True ("true") when the retrain runs mount the data volume's claim: without config.s3Bucket
the stored images (data_dir/images) and the model versions a run publishes for the pods to
import (data_dir/models) are files there. With S3 the runs need nothing of the pods' volume.
*/}}
{{- define "imageiq.retrainMountsData" -}}
{{- if not .Values.config.s3Bucket }}true{{ end }}
{{- end }}

{{/*
Refuses retrain values that would train on something else than what the pods record, or
publish where they cannot import from: the embedded SQLite (a file in the pods' volume,
unsafe to share with another pod), a data volume the runs cannot reach (an emptyDir, or a
claim they could not mount beside the pods) when the images and models live on it.
*/}}
{{- define "imageiq.refuseRetrain" -}}
{{- $values := .Values }}
{{- if include "imageiq.embeddedDatabase" . }}
{{- fail "retrain.enabled needs a shared database: set secrets.database.existingSecret (the embedded SQLite lives in the pods' data volume, and a retrain run would see an empty database of its own)" }}
{{- end }}
{{- if include "imageiq.retrainMountsData" . }}
{{- $persistence := $values.dataVolume.persistence }}
{{- if not $persistence.enabled }}
{{- fail "retrain.enabled needs the stored images and a model repository the pods share: set config.s3Bucket, or dataVolume.persistence.enabled so that the runs mount the claim they are on (an emptyDir is the pod's own)" }}
{{- end }}
{{- if and (not $persistence.existingClaim) (not (has "ReadWriteMany" $persistence.accessModes)) }}
{{- fail "retrain.enabled mounts the data volume's claim (stored images, published models) beside the serving pods: dataVolume.persistence.accessModes needs ReadWriteMany (or give an existingClaim that is), or set config.s3Bucket" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One egress rule of the NetworkPolicy: TCP `ports` to the `to` peers (anywhere when none).
*/}}
{{- define "imageiq.egressRule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Name of the bulk-job workers' objects: "<fullname>-worker" (the Deployment, its headless
metrics Service, which is also the scrape job the dashboards and alerts read, the
ScaledObject or HPA, the NetworkPolicy).
*/}}
{{- define "imageiq.workerName" -}}
{{- printf "%s-worker" (include "imageiq.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
Labels of the workers' objects and pods, and the selector of their pods: the release's,
component "worker". No `imageiq.dev/track`, so the stable and canary Deployments never
select them, and no component "server", so the API Service never routes to them.
*/}}
{{- define "imageiq.workerLabels" -}}
{{ include "imageiq.labels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "imageiq.workerSelectorLabels" -}}
{{ include "imageiq.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
True ("true") when the workers mount the data volume's claim: without config.s3Bucket the
stored images they classify, the model repository and the jobs' results files
(data_dir/jobs, which the server pods serve) are files there.
*/}}
{{- define "imageiq.workerMountsData" -}}
{{- if not .Values.config.s3Bucket }}true{{ end }}
{{- end }}

{{/*
Refuses worker values that cannot work: the embedded SQLite (each pod's own file), no broker
to consume from, a data volume the workers cannot share with the server pods, a KEDA scaler
with no Redis address, and both autoscalers at once.
*/}}
{{- define "imageiq.refuseWorker" -}}
{{- $values := .Values }}
{{- $autoscaling := $values.worker.autoscaling }}
{{- if and $autoscaling.keda.enabled $autoscaling.hpa.enabled }}
{{- fail "worker.autoscaling.keda.enabled and worker.autoscaling.hpa.enabled are exclusive: two autoscalers would fight over the workers' replica count; turn one off" }}
{{- end }}
{{- if and $autoscaling.keda.enabled (not $autoscaling.keda.redis.address) }}
{{- fail "worker.autoscaling.keda.enabled needs worker.autoscaling.keda.redis.address: the host:port of the broker's Redis, where KEDA reads the length of the list config.jobsQueue" }}
{{- end }}
{{- if include "imageiq.embeddedDatabase" . }}
{{- fail "worker.enabled needs a shared database: set secrets.database.existingSecret (the embedded SQLite lives in each server pod's volume, and a worker would see an empty database of its own)" }}
{{- end }}
{{- if not (or $values.secrets.jobsBroker.existingSecret $values.secrets.redis.existingSecret) }}
{{- fail "worker.enabled needs a broker: set secrets.jobsBroker.existingSecret (or secrets.redis.existingSecret) to a Secret holding the Redis URL the jobs are queued on" }}
{{- end }}
{{- if include "imageiq.workerMountsData" . }}
{{- $persistence := $values.dataVolume.persistence }}
{{- if not $persistence.enabled }}
{{- fail "worker.enabled needs the stored images, models and results the server pods see: set config.s3Bucket, or dataVolume.persistence.enabled so that the workers mount the claim they are on (an emptyDir is the pod's own)" }}
{{- end }}
{{- if and (not $persistence.existingClaim) (not (has "ReadWriteMany" $persistence.accessModes)) }}
{{- fail "worker.enabled mounts the data volume's claim (stored images, models, job results) beside the server pods: dataVolume.persistence.accessModes needs ReadWriteMany (or give an existingClaim that is), or set config.s3Bucket" }}
{{- end }}
{{- end }}
{{- end }}
