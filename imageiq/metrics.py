"""Every Prometheus metric ImageIQ exports, declared once.

Built on first use, inside the BentoML worker: ``prometheus_client`` must be imported after
the worker has set ``PROMETHEUS_MULTIPROC_DIR``, or the metrics never reach ``/metrics``.
Labels are kept to a few values: endpoint, model name and version (only served ones), status
and error code.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_MODEL = ("model_name", "model_version")


@dataclass(frozen=True)
class Metrics:
    requests: Any
    requests_in_flight: Any
    request_seconds: Any
    decode_seconds: Any
    preprocess_seconds: Any
    inference_seconds: Any
    postprocess_seconds: Any
    batch_size: Any
    model_ready: Any
    confidence: Any
    images_rejected: Any
    reloads: Any
    dependency_up: Any
    cache: Any
    rate_limited: Any
    records_pending: Any
    records_written: Any
    auth_failures: Any
    labelled_images: Any
    retrain_runs: Any
    retrain_last_run: Any
    canary_share: Any
    canary_agreement: Any
    canary_rollbacks: Any
    explain_seconds: Any
    jobs_submitted: Any
    jobs_images: Any
    jobs_chunk_seconds: Any
    jobs_images_per_second: Any
    jobs_queue_depth: Any
    jobs_pending_images: Any
    jobs_active: Any
    webhook_deliveries: Any


_lock = threading.Lock()


def metrics() -> Metrics:
    """The metrics, created on the first call (from any thread; registered exactly once)."""
    with _lock:
        return _create()


@functools.cache
def _create() -> Metrics:
    import prometheus_client as pc

    return Metrics(
        requests=pc.Counter(
            "imageiq_requests",
            "API requests by endpoint, HTTP status, error code and model (name:version).",
            ["endpoint", "status", "code", "model"],
        ),
        requests_in_flight=pc.Gauge(
            "imageiq_requests_in_flight",
            "API requests in progress in this pod (what the autoscaler scales on).",
            multiprocess_mode="livesum",
        ),
        request_seconds=pc.Histogram(
            "imageiq_request_seconds",
            "Whole-request latency.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
        ),
        decode_seconds=pc.Histogram(
            "imageiq_decode_seconds",
            "Image decoding per image.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
        ),
        preprocess_seconds=pc.Histogram(
            "imageiq_preprocess_seconds",
            "Colour, resize and crop per image.",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
        ),
        inference_seconds=pc.Histogram(
            "imageiq_inference_seconds",
            "Model forward pass per batch.",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
        ),
        postprocess_seconds=pc.Histogram(
            "imageiq_postprocess_seconds",
            "Top-k and response shaping per image.",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
        ),
        batch_size=pc.Histogram(
            "imageiq_batch_size",
            "Images per inference batch.",
            _MODEL,
            buckets=_BATCH_BUCKETS,
        ),
        model_ready=pc.Gauge(
            "imageiq_model_ready",
            "1 once the model is loaded and warmed up.",
            _MODEL,
            multiprocess_mode="max",
        ),
        confidence=pc.Histogram(
            "imageiq_prediction_confidence",
            "Top-1 score of each prediction (a shifting distribution hints at drift).",
            _MODEL,
            buckets=_CONFIDENCE_BUCKETS,
        ),
        images_rejected=pc.Counter(
            "imageiq_images_rejected",
            "Images refused before inference, by reason (the error code).",
            ["endpoint", "reason"],
        ),
        reloads=pc.Counter(
            "imageiq_model_reloads",
            "Settings-driven model reloads, by outcome (ok, failed).",
            ["status"],
        ),
        dependency_up=pc.Gauge(
            "imageiq_dependency_up",
            "1 while an external dependency (database, redis, storage) answers, else 0.",
            ["dependency", "backend"],
            multiprocess_mode="min",
        ),
        cache=pc.Counter(
            "imageiq_cache_requests",
            "Prediction-cache look-ups by result (hit, miss, error: the cache was down).",
            ["result"],
        ),
        rate_limited=pc.Counter(
            "imageiq_rate_limited",
            "Requests refused with 429 by the per-key rate limit.",
        ),
        records_pending=pc.Gauge(
            "imageiq_records_pending",
            "Prediction-log records accepted but not yet in the database (queue and spool).",
            multiprocess_mode="sum",
        ),
        records_written=pc.Counter(
            "imageiq_records_written",
            "Prediction-log records written to the database, by kind (image, prediction).",
            ["kind"],
        ),
        auth_failures=pc.Counter(
            "imageiq_auth_failures",
            "Requests refused by authentication (401) or authorisation (403), by code.",
            ["code"],
        ),
        # The closed loop (imageiq.rollout_sync): figures read from the database by every
        # replica, so dashboards take max(), not sum().
        labelled_images=pc.Gauge(
            "imageiq_labelled_images",
            "Stored images whose effective human label is this class (training data).",
            ["label"],
            multiprocess_mode="max",
        ),
        retrain_runs=pc.Gauge(
            "imageiq_retrain_runs",
            "imageiq retrain runs recorded in the database, by outcome.",
            ["outcome"],
            multiprocess_mode="max",
        ),
        retrain_last_run=pc.Gauge(
            "imageiq_retrain_last_run_timestamp_seconds",
            "Unix time of the latest imageiq retrain run with this outcome.",
            ["outcome"],
            multiprocess_mode="max",
        ),
        canary_share=pc.Gauge(
            "imageiq_canary_share",
            "Share of the requests that name no version routed to this challenger (0: none).",
            _MODEL,
            multiprocess_mode="max",
        ),
        canary_agreement=pc.Gauge(
            "imageiq_canary_agreement",
            "Share of a version's canary predictions that later human feedback confirmed.",
            _MODEL,
            multiprocess_mode="max",
        ),
        canary_rollbacks=pc.Counter(
            "imageiq_canary_rollbacks",
            "Canaries rolled back automatically by their policy (by this replica).",
            ["model_name"],
        ),
        explain_seconds=pc.Histogram(
            "imageiq_explain_seconds",
            "Grad-CAM explanation per image (decode, forward, backward, heat map).",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
        ),
        # Bulk jobs (imageiq.jobs). The service counts submissions; `imageiq worker` serves
        # the rest on its own port (worker_metrics_port). The gauges are read from Redis and
        # the database by every worker: dashboards take max(), not sum().
        jobs_submitted=pc.Counter(
            "imageiq_jobs_submitted",
            "Bulk jobs accepted, by source kind (s3_prefix, manifest, image_ids, archive).",
            ["source"],
        ),
        jobs_images=pc.Counter(
            "imageiq_jobs_images",
            "Job images answered by this worker, by outcome (done, failed).",
            ["outcome"],
        ),
        jobs_chunk_seconds=pc.Histogram(
            "imageiq_jobs_chunk_seconds",
            "Time a worker spent on one chunk (read, decode, inference, write).",
            buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
        ),
        jobs_images_per_second=pc.Gauge(
            "imageiq_jobs_images_per_second",
            "This worker's throughput over its latest chunk.",
        ),
        jobs_queue_depth=pc.Gauge(
            "imageiq_jobs_queue_depth",
            "Chunks waiting in the task queue (what KEDA scales the workers on).",
            multiprocess_mode="max",
        ),
        jobs_pending_images=pc.Gauge(
            "imageiq_jobs_pending_images",
            "Images of running jobs not answered yet.",
            multiprocess_mode="max",
        ),
        jobs_active=pc.Gauge(
            "imageiq_jobs_active",
            "Jobs queued or running.",
            multiprocess_mode="max",
        ),
        webhook_deliveries=pc.Counter(
            "imageiq_webhook_deliveries",
            "Job webhook delivery attempts, by outcome (delivered, failed, gave_up).",
            ["outcome"],
        ),
    )
