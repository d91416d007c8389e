"""ImageIQ's Grafana dashboard, as code: writes helm/imageiq/files/dashboards/imageiq.json.

The JSON is derived, never edited by hand: a reviewer reads this file, and `--check` (run by
the tests) fails when the committed JSON no longer matches it. The chart ships the JSON in a
ConfigMap that Grafana's dashboard sidecar picks up.

Queries read the raw series, not the recording rules, so the dashboard works without the
chart's PrometheusRule; only the week-long confidence baseline comes from a rule. Kubernetes
panels rely on the chart's naming: the Service (the scrape job), the Deployment and the HPA
all carry the release's fullname, so `deployment="$job"` finds the Deployment.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as models
from panels import (
    DATASOURCE,
    NS,
    RATE,
    SEL,
    WORKER_SEL,
    Panel,
    bars,
    distribution,
    graph,
    queries,
    rate,
    single,
)

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "helm" / "imageiq" / "files" / "dashboards" / "imageiq.json"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
MODEL = "{{model_name}}:{{model_version}}"
NO_GPU = "No GPU metrics (no DCGM exporter, or no GPU in these pods)"


def latency(stage: str, metric: str, what: str, *, width: int) -> timeseries.Panel:
    buckets = rate(f"{metric}_bucket", by="le")
    pairs = [(f"histogram_quantile({q}, {buckets})", legend) for q, legend in QUANTILES]
    return graph(
        f"{stage} latency",
        f"p50, p95 and p99 of {metric}: {what}.",
        queries(*pairs),
        unit="s",
        width=width,
    )


def overview() -> list[Panel]:
    requests = rate("imageiq_requests_total")
    errors = rate("imageiq_requests_total", 'status=~"5.."')
    hits = rate("imageiq_cache_requests_total", 'result="hit"')
    answered = rate("imageiq_cache_requests_total", 'result=~"hit|miss"')
    p99 = f"histogram_quantile(0.99, {rate('imageiq_request_seconds_bucket', by='le')})"
    ready = f"count(max by (pod) (imageiq_model_ready{{{SEL}}}) == 1) or vector(0)"
    return [
        single("Requests/s", "All API requests.", requests, unit="reqps"),
        single(
            "5xx ratio",
            "Requests failed server-side; ImageIQHighErrorRatio fires above 5%.",
            f"({errors} or vector(0)) / {requests}",
            unit="percentunit",
            red_above=0.05,
        ),
        single(
            "p99 latency",
            "Whole-request 99th percentile; ImageIQHighLatency fires above 2.5 s.",
            p99,
            unit="s",
            red_above=2.5,
        ),
        single(
            "Cache hit ratio",
            "Hits among answered look-ups.",
            f"{hits} / {answered}",
            unit="percentunit",
        ),
        single("Pods ready", "Pods with a model loaded and warmed up.", ready, unit="short"),
        single(
            "Records pending",
            "Prediction records not yet in the database (queues and spools).",
            f"sum(imageiq_records_pending{{{SEL}}})",
            unit="short",
        ),
    ]


def traffic() -> list[Panel]:
    requests = rate("imageiq_requests_total", by="endpoint, status")
    failed = rate("imageiq_requests_total", 'code!=""', by="status, code")
    rejected = rate("imageiq_images_rejected_total", by="reason")
    return [
        graph(
            "Requests by endpoint and status",
            "API requests per second.",
            queries((requests, "{{endpoint}} {{status}}")),
            unit="reqps",
        ),
        graph(
            "Errors by code",
            "Refused or failed requests by status and machine-readable code, and images "
            "refused before inference by reason.",
            queries((failed, "{{status}} {{code}}"), (rejected, "rejected image: {{reason}}")),
            unit="reqps",
        ),
    ]


def stages() -> list[Panel]:
    return [
        latency("Request", "imageiq_request_seconds", "the whole request", width=8),
        latency("Decode", "imageiq_decode_seconds", "per image", width=8),
        latency("Preprocess", "imageiq_preprocess_seconds", "per image", width=8),
        latency("Inference", "imageiq_inference_seconds", "per batch, the forward pass", width=12),
        latency("Postprocess", "imageiq_postprocess_seconds", "per image", width=12),
    ]


def model() -> list[Panel]:
    by = "model_name, model_version"
    mean = (
        f"{rate('imageiq_prediction_confidence_sum', by=by)}"
        f" / {rate('imageiq_prediction_confidence_count', by=by)}"
    )
    baseline = f"namespace_job_model:imageiq_prediction_confidence:avg_over_time7d_mean1h{{{SEL}}}"
    reloads = f"sum by (status) (increase(imageiq_model_reloads_total{{{SEL}}}[{RATE}]))"
    return [
        distribution(
            "Batch size distribution",
            "Images per inference batch: adaptive batching at work.",
            "imageiq_batch_size",
            unit="short",
        ),
        distribution(
            "Confidence distribution",
            "Top-1 score of each prediction; a distribution that shifts hints at drift.",
            "imageiq_prediction_confidence",
            unit="percentunit",
        ),
        graph(
            "Mean confidence",
            "Mean top-1 score per model version, and the 7-day baseline ImageIQConfidenceDrift "
            "compares it with (from the chart's recording rules).",
            queries((mean, MODEL), (baseline, f"{MODEL} 7-day baseline")),
            unit="percentunit",
            width=8,
        ),
        graph(
            "Models ready",
            "1 once a pod has loaded and warmed up a model version; a retired version stays 0.",
            queries((f"imageiq_model_ready{{{SEL}}}", f"{{{{pod}}}} {MODEL}")),
        ),
        graph(
            "Model reloads",
            "Settings-driven model reloads by outcome.",
            queries((reloads, "{{status}}")),
        ),
    ]


def cache() -> list[Panel]:
    hits = rate("imageiq_cache_requests_total", 'result="hit"')
    answered = rate("imageiq_cache_requests_total", 'result=~"hit|miss"')
    ratio = f"{hits} / {answered}"
    yesterday = ratio.replace(f"[{RATE}]", f"[{RATE}] offset 1d")
    lookups = rate("imageiq_cache_requests_total", by="result")
    return [
        graph(
            "Cache hit ratio, now and a day earlier",
            "Hits among answered look-ups, and a day earlier (ImageIQCacheHitRatioCollapsed "
            "compares the two over an hour).",
            queries((ratio, "now"), (yesterday, "a day earlier")),
            unit="percentunit",
        ),
        graph(
            "Cache look-ups",
            "Prediction-cache look-ups by result; error: the cache was down.",
            queries((lookups, "{{result}}")),
            unit="ops",
        ),
    ]


def capacity() -> list[Panel]:
    # Two kube-state-metrics replicas report each object twice: max, never sum.
    deployment = f'{NS}, deployment="$job"'
    hpa = f'{NS}, horizontalpodautoscaler="$job"'
    in_flight = f"sum by (pod) (imageiq_requests_in_flight{{{SEL}}})"
    return [
        graph(
            "Replicas",
            "From kube-state-metrics: the Deployment's available and desired replicas, and "
            "the HPA's current and maximum.",
            queries(
                (f"max(kube_deployment_status_replicas_available{{{deployment}}})", "available"),
                (f"max(kube_deployment_spec_replicas{{{deployment}}})", "desired"),
                (
                    f"max(kube_horizontalpodautoscaler_status_current_replicas{{{hpa}}})",
                    "HPA current",
                ),
                (f"max(kube_horizontalpodautoscaler_spec_max_replicas{{{hpa}}})", "HPA max"),
            ),
        ),
        graph(
            "In-flight requests per pod",
            "Requests in progress in each pod: what the HPA scales on.",
            queries((in_flight, "{{pod}}")),
        ),
    ]


def dependencies() -> list[Panel]:
    up = f"min by (dependency, backend) (imageiq_dependency_up{{{SEL}}})"
    pending = f"sum by (pod) (imageiq_records_pending{{{SEL}}})"
    written = rate("imageiq_records_written_total", by="kind")
    return [
        graph(
            "Dependencies up",
            "1 while every pod reaches the dependency; 0 when one pod or more cannot.",
            queries((up, "{{dependency}} ({{backend}})")),
            width=8,
        ),
        graph(
            "Records pending per pod",
            "Prediction records accepted but not yet in the database, per pod.",
            queries((pending, "{{pod}}")),
            width=8,
        ),
        graph(
            "Records written",
            "Prediction-log records written to the database, by kind.",
            queries((written, "{{kind}}")),
            unit="ops",
            width=8,
        ),
    ]


def gpus() -> list[Panel]:
    # DCGM's series name the pod using the GPU; keep those of this job's scrape targets.
    def per_gpu(metric: str) -> str:
        return f"max by (pod, gpu) ({metric}{{{NS}}} and on (namespace, pod) up{{{SEL}}})"

    return [
        graph(
            "GPU utilisation",
            "DCGM exporter: GPU utilisation per pod and GPU.",
            queries((per_gpu("DCGM_FI_DEV_GPU_UTIL"), "{{pod}} GPU {{gpu}}")),
            unit="percent",
            no_value=NO_GPU,
        ),
        graph(
            "GPU memory used",
            "DCGM exporter: frame-buffer memory used per pod and GPU.",
            queries((per_gpu("DCGM_FI_DEV_FB_USED"), "{{pod}} GPU {{gpu}}")),
            unit="mbytes",
            no_value=NO_GPU,
        ),
    ]


def closed_loop() -> list[Panel]:
    """Labelled data, retrain runs and the canary. The gauges come from the database through
    every replica, so they are read with max() across pods, never sum(). A version is in a
    canary while it has an agreement series (the champion and the challenger both get one):
    the side-by-side panels keep those versions only."""
    by = "model_name, model_version"
    in_canary = f"max by ({by}) (imageiq_canary_agreement{{{SEL}}})"
    # imageiq_requests_total names the version in one label, "name:version".
    in_canary_model = f'label_join({in_canary}, "model", ":", "model_name", "model_version")'
    requests = rate("imageiq_requests_total", by="model")
    errors = rate("imageiq_requests_total", 'status=~"5.."', by="model")
    error_ratio = f"({errors} or 0 * {requests}) / {requests} and on (model) {in_canary_model}"
    mean = (
        f"{rate('imageiq_prediction_confidence_sum', by=by)}"
        f" / {rate('imageiq_prediction_confidence_count', by=by)}"
        f" and on ({by}) {in_canary}"
    )
    buckets = rate("imageiq_inference_seconds_bucket", by=f"le, {by}")
    p95 = f"histogram_quantile(0.95, {buckets}) and on ({by}) {in_canary}"
    last_run = f"max by (outcome) (imageiq_retrain_last_run_timestamp_seconds{{{SEL}}} > 0)"
    rollbacks = f"sum(increase(imageiq_canary_rollbacks_total{{{SEL}}}[$__range])) or vector(0)"
    no_canary = "No canary running"
    return [
        single(
            "Since the last retrain run",
            "Time since the latest `imageiq retrain` run with each outcome (promoted, canary, "
            "rejected, failed). ImageIQRetrainFailed fires while the latest run failed, "
            "ImageIQRetrainStale when no run came for two schedule periods.",
            f"time() - {last_run}",
            unit="s",
            legend="{{outcome}}",
        )
        .span(12)
        .height(4),
        single(
            "Canary rollbacks",
            "Canaries rolled back automatically in the dashboard's time range "
            "(ImageIQCanaryRolledBack fires for an hour after each).",
            rollbacks,
            unit="short",
            red_above=1,
        ).span(6),
        single(
            "Challenger share",
            "Share of the requests that name no version routed to the challenger now; 0: no "
            "canary.",
            f"max(imageiq_canary_share{{{SEL}}}) or vector(0)",
            unit="percentunit",
        ).span(6),
        bars(
            "Labelled images per class",
            "Stored images with an effective human label, per class: the training data of the "
            "next retrain run.",
            f"sort_desc(max by (label) (imageiq_labelled_images{{{SEL}}}))",
            "{{label}}",
            unit="short",
        ),
        graph(
            "Retrain runs by outcome",
            "`imageiq retrain` runs recorded in the database: promoted (straight to serving), "
            "canary (serving a share first), rejected (did not pass its gates), failed.",
            queries((f"max by (outcome) (imageiq_retrain_runs{{{SEL}}})", "{{outcome}}")),
        ),
        graph(
            "Canary share",
            "Share of the requests that name no version routed to each challenger; 0 when no "
            "canary runs.",
            queries((f"max by ({by}) (imageiq_canary_share{{{SEL}}})", MODEL)),
            unit="percentunit",
        ),
        graph(
            "Canary agreement",
            "Share of each version's canary-period predictions that later human feedback "
            "confirmed: champion and challenger side by side.",
            queries((in_canary, MODEL)),
            unit="percentunit",
            no_value=no_canary,
        ),
        graph(
            "Canary error ratio",
            "5xx among each canary version's requests.",
            queries((error_ratio, "{{model}}")),
            unit="percentunit",
            width=8,
            no_value=no_canary,
        ),
        graph(
            "Canary mean confidence",
            "Mean top-1 score of each canary version's predictions.",
            queries((mean, MODEL)),
            unit="percentunit",
            width=8,
            no_value=no_canary,
        ),
        graph(
            "Canary p95 inference latency",
            "95th percentile of each canary version's forward pass per batch.",
            queries((p95, MODEL)),
            unit="s",
            width=8,
            no_value=no_canary,
        ),
    ]


def bulk_jobs() -> list[Panel]:
    """`POST /v1/jobs` and the workers that answer it (`imageiq worker`, scrape job
    "$job-worker"). The queue and job gauges are read from Redis and the database by every
    worker: max() across them, never sum(). Throughput and failures are counters of each
    worker: sum()."""
    images = rate("imageiq_jobs_images_total", by="outcome", sel=WORKER_SEL)
    failed = rate("imageiq_jobs_images_total", 'outcome="failed"', sel=WORKER_SEL)
    answered = rate("imageiq_jobs_images_total", sel=WORKER_SEL)
    chunk = rate("imageiq_jobs_chunk_seconds_bucket", by="le", sel=WORKER_SEL)
    webhooks = rate("imageiq_webhook_deliveries_total", by="outcome", sel=WORKER_SEL)
    submitted = rate("imageiq_jobs_submitted_total", by="source")
    workers = f'{NS}, deployment="$job-worker"'
    no_jobs = "No bulk-job workers (worker.enabled off) or no job yet"
    return [
        single(
            "Chunks waiting",
            "Chunks in the task queue, not yet taken by a worker: what KEDA (or the HPA) "
            "scales the workers on. ImageIQJobsQueueStuck fires when it stays up while no "
            "image is answered.",
            f"max(imageiq_jobs_queue_depth{{{WORKER_SEL}}}) or vector(0)",
            unit="short",
        ),
        single(
            "Images pending",
            "Images of running jobs not answered yet.",
            f"max(imageiq_jobs_pending_images{{{WORKER_SEL}}}) or vector(0)",
            unit="short",
        ),
        single(
            "Jobs active",
            "Jobs queued or running.",
            f"max(imageiq_jobs_active{{{WORKER_SEL}}}) or vector(0)",
            unit="short",
        ),
        graph(
            "Job images answered",
            "Images answered per second across the workers, by outcome (done, failed).",
            queries((images, "{{outcome}}")),
            unit="ops",
            no_value=no_jobs,
        ),
        graph(
            "Job image failure ratio",
            "Failed images among those answered; ImageIQJobsFailingImages fires above 10%.",
            queries((f"({failed} or 0 * {answered}) / {answered}", "failed")),
            unit="percentunit",
            no_value=no_jobs,
            width=8,
        ),
        graph(
            "Job progress",
            "Images of running jobs not answered yet, and jobs queued or running.",
            queries(
                (f"max(imageiq_jobs_pending_images{{{WORKER_SEL}}})", "images pending"),
                (f"max(imageiq_jobs_active{{{WORKER_SEL}}})", "jobs active"),
                (f"max(imageiq_jobs_queue_depth{{{WORKER_SEL}}})", "chunks waiting"),
            ),
            width=8,
            no_value=no_jobs,
        ),
        graph(
            "Chunk duration",
            "p50 and p95 of the time a worker spends on a chunk (read, decode, inference, "
            "write): keep worker.terminationGracePeriodSeconds and jobsVisibilityTimeoutS "
            "above it.",
            queries(
                (f"histogram_quantile(0.5, {chunk})", "p50"),
                (f"histogram_quantile(0.95, {chunk})", "p95"),
            ),
            unit="s",
            width=8,
            no_value=no_jobs,
        ),
        graph(
            "Workers",
            "Each worker's throughput over its latest chunk, and the workers available and "
            "desired (kube-state-metrics; KEDA or the HPA set the desired count).",
            queries(
                (f"max by (pod) (imageiq_jobs_images_per_second{{{WORKER_SEL}}})", "{{pod}}"),
                (f"max(kube_deployment_status_replicas_available{{{workers}}})", "available"),
                (f"max(kube_deployment_spec_replicas{{{workers}}})", "desired"),
            ),
            width=8,
            no_value=no_jobs,
        ),
        graph(
            "Webhook deliveries",
            "Job webhook attempts by outcome: delivered, failed (retried later), gave_up "
            "(attempts spent; ImageIQJobWebhooksFailing fires).",
            queries((webhooks, "{{outcome}}")),
            unit="ops",
            no_value=no_jobs,
            width=8,
        ),
        graph(
            "Jobs submitted",
            "Jobs the API accepted, by source (s3_prefix, manifest, image_ids, archive).",
            queries((submitted, "{{source}}")),
            unit="ops",
            width=8,
        ),
    ]


def variables() -> list[Builder[models.VariableModel]]:
    # imageiq_model_ready exists as soon as a pod is up, before its first request.
    def label(name: str, of: str) -> db.QueryVariable:
        return (
            db.QueryVariable(name)
            .label(name.capitalize())
            .datasource(DATASOURCE)
            .query(f"label_values({of}, {name})")
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(models.VariableSort.ALPHABETICAL_ASC)
        )

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        label("namespace", "imageiq_model_ready"),
        label("job", 'imageiq_model_ready{namespace="$namespace"}'),
    ]


def build() -> dict[str, object]:
    # Grafana's own annotations (alerts, manual notes), which an export would carry too.
    annotations = (
        db.AnnotationQuery()
        .name("Annotations & Alerts")
        .datasource(models.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .built_in(1)
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
    )
    dashboard = (
        db.Dashboard("ImageIQ")
        .uid("imageiq-overview")
        .description(
            "ImageIQ image classification: traffic, latency, model, cache, capacity, the "
            "closed loop (labelled data, retraining, canaries) and bulk jobs."
        )
        .tags(["imageiq", "bentoml"])
        .readonly()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .annotation(annotations)
        .variables(variables())
    )
    sections = [
        ("Overview", overview()),
        ("Traffic", traffic()),
        ("Latency by stage", stages()),
        ("Model", model()),
        ("Cache", cache()),
        ("Capacity", capacity()),
        ("Dependencies and prediction records", dependencies()),
        ("GPU", gpus()),
        ("Closed loop", closed_loop()),
        ("Bulk jobs", bulk_jobs()),
    ]
    for title, panels in sections:
        dashboard = dashboard.with_row(db.Row(title))
        for panel in panels:
            dashboard = dashboard.with_panel(panel)
    built = dashboard.build()
    # Ids in reading order: without them Grafana numbers the panels anew on each import.
    for number, built_panel in enumerate(built.panels or [], start=1):
        built_panel.id_val = number
    encoded: dict[str, object] = json.loads(json.dumps(built, cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the ImageIQ dashboard.")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: %(default)s")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        return 0
    current = args.output.read_text() if args.output.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        text.splitlines(keepends=True),
        f"{args.output} (committed)",
        f"{args.output} (generated)",
    )
    sys.stderr.write(
        f"{args.output} is out of date: run `python monitoring/dashboards.py`.\n" + "".join(diff)
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
