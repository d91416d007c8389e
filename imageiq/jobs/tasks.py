"""The jobs' task queue: Celery on the Redis broker (docs/architecture.md says why Celery).

The service splits a job into chunks of ``jobs_chunk_size`` images and publishes one
``classify_chunk`` task per chunk; ``imageiq worker`` processes consume them one at a time.
Delivery guarantees come from the broker and the ledger together:

- tasks are acknowledged *late* (after the chunk's answers are committed) and the worker
  prefetches nothing more, so a worker killed mid-chunk leaves its chunk unacknowledged;
  the broker hands it to another worker once ``jobs_visibility_timeout_s`` has passed;
- a chunk re-run answers only its items still ``pending`` (:func:`ledger.record` writes an
  answer once), so every image ends with exactly one result however often its chunk runs;
- a chunk that fails on a dependency is retried with exponential back-off, and after
  ``jobs_max_retries`` its images fail with that error rather than hold the job forever;
- a job whose chunks were lost with the broker's memory (a Redis restart without
  persistence) is found by the workers' sweep and its pending chunks published again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

from celery import Celery, Task
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from imageiq import errors
from imageiq.db.schema import utcnow
from imageiq.jobs import ledger, result_files, webhooks
from imageiq.jobs.blobs import Blobs
from imageiq.jobs.bulk import BulkClassifier, fastest_batch
from imageiq.metrics import metrics
from imageiq.settings import Settings

log = logging.getLogger("imageiq.jobs")

CHUNK_TASK = "imageiq.jobs.classify_chunk"
WEBHOOK_TASK = "imageiq.jobs.deliver_webhook"
_TRANSIENT = (errors.DatabaseUnavailable, errors.StorageUnavailable, SQLAlchemyError, OSError)


def make_app(settings: Settings) -> Celery:
    """A Celery app on the settings' broker, with the jobs' tasks registered."""
    url = settings.broker_url
    if url is None:
        raise errors.JobsUnavailable(
            "Bulk jobs need a task queue: set IMAGEIQ_JOBS_BROKER_URL or IMAGEIQ_REDIS_URL."
        )
    app = Celery("imageiq", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.jobs_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            "visibility_timeout": settings.jobs_visibility_timeout_s,
            # Every live worker looks for abandoned chunks this often.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 3,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_hijack_root_logger=False,
        worker_disable_rate_limits=True,
        enable_utc=True,
    )
    app.task(name=CHUNK_TASK, bind=True, max_retries=None)(_classify_chunk)
    app.task(name=WEBHOOK_TASK, bind=True, max_retries=None)(_deliver_webhook)
    return app


# --- publishing (the service, the sweep) ----------------------------------------------------
def publish_chunks(
    app: Celery, settings: Settings, job_id: str, starts: list[int], *, total: int, size: int
) -> None:
    """One task per chunk start; raises :class:`JobsUnavailable` if the broker is down."""
    try:
        with app.producer_or_acquire() as producer:
            for first in starts:
                app.send_task(
                    CHUNK_TASK,
                    args=[job_id, first, min(first + size, total)],
                    queue=settings.jobs_queue,
                    producer=producer,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                )
    except Exception as e:
        raise errors.JobsUnavailable(f"The task queue is unavailable: {e}", retry_after=5) from e


def publish_webhook(app: Celery, settings: Settings, job_id: str, event: str) -> None:
    try:
        app.send_task(
            WEBHOOK_TASK, args=[job_id, event, uuid.uuid4().hex], queue=settings.jobs_queue
        )
    except Exception as e:  # the sweep does not cover webhooks: say so loudly
        log.error("webhook %s of job %s could not be queued: %s", event, job_id, e)


def check_broker(app: Celery) -> None:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as e:
        raise errors.JobsUnavailable(f"The task queue is unavailable: {e}", retry_after=5) from e


# --- the worker side ------------------------------------------------------------------------
class WorkerRuntime:
    """What a worker process holds across tasks: settings, database, object store, and the
    models it loaded (the most recently used one; a job's model stays loaded for its chunks)."""

    def __init__(self, settings: Settings, *, engine: Engine, app: Celery) -> None:
        self.settings, self.engine, self.app = settings, engine, app
        self.blobs = Blobs(settings)
        self._models: OrderedDict[str, BulkClassifier] = OrderedDict()
        self._lock = threading.Lock()

    def bulk(self, tag: str) -> BulkClassifier:
        with self._lock:
            found = self._models.get(tag)
            if found is not None:
                self._models.move_to_end(tag)
                return found
            while self._models:
                _, old = self._models.popitem(last=False)
                old.close()
            found = self._models[tag] = load_bulk(self.settings, tag)
            return found

    def close(self) -> None:
        with self._lock:
            for bulk in self._models.values():
                bulk.close()
            self._models.clear()


def load_bulk(settings: Settings, tag: str) -> BulkClassifier:
    """The model ``tag`` from the local store (fetched from the model repository when a
    worker's store lacks it), warmed up, with its decode processes started."""
    from imageiq.inference import Classifier, InferenceOptions
    from imageiq.model_repo import ModelRepository

    ModelRepository(settings).ensure_local(tag)
    options = InferenceOptions(
        precision=settings.precision,
        channels_last=settings.channels_last,
        compile=settings.compile,
        max_batch_size=settings.jobs_batch_size,
    )
    classifier = Classifier.load(
        tag, device=settings.device, options=options, threads=settings.torch_threads
    )
    classifier.warm_up()
    batch, rates = fastest_batch(classifier, settings.jobs_batch_size)
    log.info(
        "model %s: batches of %d for jobs (images/s by batch size: %s)",
        tag,
        batch,
        ", ".join(f"{size}: {rate:.1f}" for size, rate in rates.items()),
    )
    bulk = BulkClassifier(
        classifier,
        batch_size=batch,
        decode_processes=settings.jobs_decode_processes
        or decode_processes(classifier.device.type, os.cpu_count() or 1),
        read_concurrency=settings.jobs_read_concurrency,
        max_image_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft=settings.jpeg_draft,
    )
    bulk.warm_up()
    log.info("model %s loaded for jobs (%s)", tag, classifier.precision)
    return bulk


def decode_processes(device: str, cores: int) -> int:
    """The default decode processes. On a CPU node the model needs the cores: one decoder
    per four cores keeps ResNet-50 fed (on 2 cores, one decoder gave 0.95 of the ceiling,
    two 0.83-0.89: they preempt the model's OpenMP threads; docs/performance.md). With a
    GPU, decoding is the bottleneck: every core but the one feeding the device."""
    return max(1, cores // 4) if device == "cpu" else max(1, cores - 1)


_runtime: WorkerRuntime | None = None


def install_runtime(runtime: WorkerRuntime | None) -> None:
    """Set by ``imageiq worker`` before it consumes (the tasks run in its process)."""
    global _runtime
    _runtime = runtime


def _current() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime: tasks run only inside `imageiq worker`")
    return _runtime


def run_chunk(rt: WorkerRuntime, job_id: str, first: int, last: int) -> str:
    """Answers the chunk's pending items; returns what happened (for the log)."""
    engine = rt.engine
    try:
        current = ledger.view(engine, job_id)
    except errors.JobNotFound:
        return "no such job"
    if current.state not in ledger.ACTIVE:
        return f"job {current.state}"
    items = ledger.pending_items(engine, job_id, first, last)
    if items:
        ledger.start(engine, job_id)
        try:
            bulk = rt.bulk(current.model)
        except errors.ImageIQError as e:
            if e.status >= 500:
                raise
            if ledger.fail(engine, job_id, error=f"{e.code}: {e.message}"):
                _webhook_if_wanted(rt, job_id, "job.failed")
            return f"model {current.model}: {e.code}"
        started = time.perf_counter()
        m = metrics()

        def on_batch(outcomes: list[ledger.ItemOutcome]) -> None:
            written = ledger.record(engine, job_id, outcomes)
            m.jobs_images.labels("done").inc(written.done)
            m.jobs_images.labels("failed").inc(written.failed)

        completed = bulk.classify(
            items,
            read=rt.blobs.read,
            top_k=current.top_k,
            min_confidence=current.min_confidence,
            on_batch=on_batch,
            should_stop=lambda: ledger.state_of(engine, job_id) != "running",
        )
        elapsed = time.perf_counter() - started
        m.jobs_chunk_seconds.observe(elapsed)
        if elapsed > 0:
            m.jobs_images_per_second.set(len(items) / elapsed)
        if not completed:
            return "stopped: job cancelled"
        if current.progress_webhooks and current.callback_url:
            _progress_webhook(rt, job_id)
    finish_if_complete(rt, job_id)
    return f"{len(items)} images"


PROGRESS_EVERY_S = 30


def _progress_webhook(rt: WorkerRuntime, job_id: str) -> None:
    """``job.progress`` after a chunk, at most every :data:`PROGRESS_EVERY_S` per job (a
    Redis key claims the slot, whichever worker gets there)."""
    try:
        with rt.app.connection_for_read() as conn:
            client = conn.default_channel.client
            key = f"{rt.settings.jobs_queue}:progress:{job_id}"
            claimed = client.set(key, "1", nx=True, ex=PROGRESS_EVERY_S)
    except Exception as e:  # a progress call is a courtesy: never the chunk's failure
        log.warning("progress webhook of job %s skipped: %s", job_id, e)
        return
    if claimed:
        publish_webhook(rt.app, rt.settings, job_id, "job.progress")


def finish_if_complete(rt: WorkerRuntime, job_id: str) -> None:
    if ledger.pending_count(rt.engine, job_id) or ledger.state_of(rt.engine, job_id) != "running":
        return
    files = result_files.write(rt.settings, rt.engine, rt.blobs, job_id)
    if ledger.finish(rt.engine, job_id, results=files):
        log.info("job %s succeeded", job_id)
        _webhook_if_wanted(rt, job_id, "job.succeeded")


def fail_items(
    rt: WorkerRuntime, job_id: str, first: int, last: int, error: errors.ImageIQError
) -> None:
    """A chunk out of retries: its pending images fail with the dependency's error."""
    items = ledger.pending_items(rt.engine, job_id, first, last)
    ledger.record(
        rt.engine,
        job_id,
        [ledger.ItemOutcome(p, None, None, error.code, error.message) for p, _ in items],
    )
    metrics().jobs_images.labels("failed").inc(len(items))
    finish_if_complete(rt, job_id)


def _webhook_if_wanted(rt: WorkerRuntime, job_id: str, event: str) -> None:
    if ledger.webhook_secret(rt.engine, job_id):  # a job has a secret iff it has a callback
        publish_webhook(rt.app, rt.settings, job_id, event)


def _backoff(retries: int) -> float:
    return float(min(600, 2 * 2**retries))


def _classify_chunk(task: Task, job_id: str, first: int, last: int) -> str:
    rt = _current()
    try:
        return run_chunk(rt, job_id, first, last)
    except _TRANSIENT as e:
        error = e if isinstance(e, errors.ImageIQError) else errors.DatabaseUnavailable(str(e))
        retries = task.request.retries
        log.warning("chunk %s[%d:%d] failed (try %d): %s", job_id, first, last, retries + 1, e)
        if retries >= rt.settings.jobs_max_retries:
            try:
                fail_items(rt, job_id, first, last, error)
                return f"gave up: {error.code}"
            except _TRANSIENT:
                pass  # the database is down too: keep the chunk, try again later
        raise task.retry(countdown=_backoff(retries), exc=e) from e


def _deliver_webhook(task: Task, job_id: str, event: str, delivery_id: str) -> str:
    rt = _current()
    settings = rt.settings
    try:
        current = ledger.view(rt.engine, job_id)
        secret = ledger.webhook_secret(rt.engine, job_id)
    except errors.JobNotFound:
        return "no such job"
    if not current.callback_url or not secret:
        return "no callback"
    attempt = task.request.retries + 1
    body = webhooks.payload(
        event=event,
        job=result_files.describe(settings, rt.blobs, current),
        delivery_id=delivery_id,
    )
    outcome = webhooks.deliver(
        current.callback_url,
        secret=secret,
        event=event,
        body=body,
        timeout_s=settings.webhook_timeout_s,
        allowed_networks=settings.webhook_allowed_networks,
    )
    ledger.record_delivery(
        rt.engine,
        job_id,
        event=event,
        attempt=attempt,
        status_code=outcome.status_code,
        error=outcome.error,
        duration_ms=outcome.duration_ms,
    )
    counter = metrics().webhook_deliveries
    if outcome.delivered:
        counter.labels("delivered").inc()
        return "delivered"
    if attempt >= settings.webhook_max_attempts:
        counter.labels("gave_up").inc()
        log.error("webhook %s of job %s given up after %d attempts", event, job_id, attempt)
        return "gave up"
    counter.labels("failed").inc()
    cap = min(3600.0, settings.jobs_visibility_timeout_s * 2 / 3)
    raise task.retry(countdown=webhooks.backoff_s(attempt - 1, cap_s=cap))


# --- the sweep and the gauges (a thread in each worker) -------------------------------------
def sweep(rt: WorkerRuntime, *, stale_after_s: float, claim: Callable[[str], bool]) -> int:
    """Publishes again the pending chunks of running jobs that answered nothing for
    ``stale_after_s`` (their tasks were lost with the broker); returns how many.
    ``claim(job_id)`` is False for a job published again less than ``stale_after_s`` ago."""
    now = utcnow()
    published = 0
    for job_id, last_answer in ledger.running_jobs(rt.engine):
        current = ledger.view(rt.engine, job_id)
        since = last_answer or current.started_at or current.created_at
        if (now - since).total_seconds() < stale_after_s:
            continue
        starts = ledger.stale_chunks(rt.engine, job_id)
        if not starts:
            finish_if_complete(rt, job_id)
            continue
        if not claim(job_id):
            continue
        size = ledger.chunk_size(rt.engine, job_id)
        log.warning(
            "job %s answered nothing for %.0f s: publishing %d chunks again",
            job_id,
            (now - since).total_seconds(),
            len(starts),
        )
        publish_chunks(rt.app, rt.settings, job_id, starts, total=current.total, size=size)
        published += len(starts)
    return published


def queue_depth(app: Celery, settings: Settings) -> int:
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        return int(client.llen(settings.jobs_queue))


def housekeeping(rt: WorkerRuntime, stop: threading.Event, *, interval_s: float = 15.0) -> None:
    """Every ``interval_s``: the gauges; every few minutes, the sweep (one worker at a
    time, under a Redis lock)."""
    stale_after = 2.0 * rt.settings.jobs_visibility_timeout_s
    last_sweep = 0.0
    m = metrics()
    while not stop.wait(interval_s):
        try:
            m.jobs_queue_depth.set(queue_depth(rt.app, rt.settings))
            jobs, pending = ledger.active_totals(rt.engine)
            m.jobs_active.set(jobs)
            m.jobs_pending_images.set(pending)
            if time.monotonic() - last_sweep > max(60.0, stale_after / 4):
                last_sweep = time.monotonic()
                _sweep_once(rt, stale_after_s=stale_after)
        except Exception as e:  # next time; a worker never dies of its housekeeping
            log.warning("jobs housekeeping failed: %s", e)


def _sweep_once(rt: WorkerRuntime, *, stale_after_s: float) -> None:
    """The sweep, by one worker at a time (a Redis lock); each job published again at most
    once per ``stale_after_s``."""
    with rt.app.connection_for_read() as conn:
        client = conn.default_channel.client

        def claim(job_id: str) -> bool:
            key = f"{rt.settings.jobs_queue}:swept:{job_id}"
            return bool(client.set(key, "1", nx=True, ex=max(1, int(stale_after_s))))

        lock = client.lock(f"{rt.settings.jobs_queue}:sweep", timeout=120, blocking=False)
        if lock.acquire(blocking=False):
            try:
                sweep(rt, stale_after_s=stale_after_s, claim=claim)
            finally:
                lock.release()
