"""Submitting, reading and cancelling jobs: what ``/v1/jobs`` and ``imageiq jobs`` call.

A submission is checked whole before anything is kept (options, callback URL, the source:
bucket allow-list, manifest lines, archive members; the broker answering), then the job and
its items are written in one transaction and its chunks published. If publishing fails the
job is deleted again and the client gets 503: a job either runs or never existed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import Engine

from imageiq import errors
from imageiq.classify import MAX_TOP_K
from imageiq.jobs import ledger, plan, result_files, tasks, webhooks
from imageiq.jobs.blobs import Blobs
from imageiq.metrics import metrics
from imageiq.settings import Settings

log = logging.getLogger("imageiq.jobs")


@dataclass(frozen=True)
class JobOptions:
    model_name: str
    model_version: str
    top_k: int = 5
    min_confidence: float = 0.0
    callback_url: str | None = None
    progress_webhooks: bool = False


@dataclass(frozen=True)
class Submitted:
    job: dict[str, Any]
    webhook_secret: str | None  # shown once


@dataclass(frozen=True)
class Caller:
    """Who asks: a job is visible to the key that submitted it, and to admin keys."""

    key_id: str | None
    admin: bool = False


class Jobs:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.blobs = Blobs(settings)

    @functools.cached_property
    def app(self) -> Celery:
        return tasks.make_app(self.settings)

    # --- submission -------------------------------------------------------------------------
    def check(self, options: JobOptions) -> None:
        """Options and callback, before the source is read: 422 when wrong, 503 without a
        task queue."""
        if self.settings.broker_url is None:
            raise errors.JobsUnavailable(
                "Bulk jobs are off on this service: it has no task queue "
                "(IMAGEIQ_JOBS_BROKER_URL or IMAGEIQ_REDIS_URL)."
            )
        if not 1 <= options.top_k <= MAX_TOP_K:
            raise errors.InvalidParameter(
                f"top_k must be between 1 and {MAX_TOP_K}, not {options.top_k}.",
                details={"field": "top_k"},
            )
        if not 0.0 <= options.min_confidence <= 1.0:
            raise errors.InvalidParameter(
                f"min_confidence must be between 0 and 1, not {options.min_confidence}.",
                details={"field": "min_confidence"},
            )
        if options.callback_url is not None:
            webhooks.check_callback(
                options.callback_url, allowed_networks=self.settings.webhook_allowed_networks
            )
        tasks.check_broker(self.app)

    def plan_prefix(self, uri: str) -> plan.Plan:
        return plan.from_prefix(self.settings, self.blobs, uri)

    def plan_manifest(self, uri: str) -> plan.Plan:
        return plan.from_manifest(self.settings, self.blobs, uri)

    def plan_image_ids(self, ids: list[str]) -> plan.Plan:
        return plan.from_image_ids(self.settings, self.engine, ids)

    def plan_archive(self, path: Path, *, filename: str | None) -> plan.Plan:
        return plan.from_archive(self.settings, self.blobs, path, filename=filename)

    def submit(
        self,
        planned: plan.Plan,
        options: JobOptions,
        *,
        created_by: str | None,
        request_id: str | None,
    ) -> Submitted:
        job_id = ledger.new_id()
        secret = webhooks.new_secret() if options.callback_url else None
        size = self.settings.jobs_chunk_size
        ledger.create(
            self.engine,
            ledger.NewJob(
                model_name=options.model_name,
                model_version=options.model_version,
                top_k=options.top_k,
                min_confidence=options.min_confidence,
                source=planned.source,
                chunk_size=size,
                callback_url=options.callback_url,
                webhook_secret=secret,
                progress_webhooks=options.progress_webhooks,
                created_by=created_by,
                request_id=request_id,
            ),
            planned.refs,
            job_id=job_id,
        )
        total = len(planned.refs)
        try:
            tasks.publish_chunks(
                self.app, self.settings, job_id, list(range(0, total, size)), total=total, size=size
            )
        except errors.JobsUnavailable:
            ledger.drop(self.engine, job_id)
            raise
        metrics().jobs_submitted.labels(planned.source["kind"]).inc()
        log.info("job %s: %d images (%s)", job_id, total, planned.source["kind"])
        return Submitted(self.describe(ledger.view(self.engine, job_id)), secret)

    # --- reading ----------------------------------------------------------------------------
    def get(self, job_id: str, caller: Caller) -> ledger.JobView:
        """The job, if ``caller`` may see it; 404 otherwise (as if it did not exist)."""
        view = ledger.view(self.engine, job_id)
        if not caller.admin and view.created_by != caller.key_id:
            raise errors.JobNotFound(f"No job {job_id[:64]!r}.")
        return view

    def describe(self, view: ledger.JobView) -> dict[str, Any]:
        return result_files.describe(self.settings, self.blobs, view)

    def recent(self, caller: Caller, *, limit: int) -> list[dict[str, Any]]:
        views = ledger.recent(
            self.engine, created_by=None if caller.admin else caller.key_id, limit=limit
        )
        return [self.describe(v) for v in views]

    def results(self, job_id: str, caller: Caller) -> Iterator[dict[str, Any]]:
        self.get(job_id, caller)
        return ledger.iter_results(self.engine, job_id)

    def results_file(self, job_id: str, caller: Caller, fmt: str) -> tuple[str | None, Path | None]:
        """(presigned URL, local file) of a finished job's results file, one of them set."""
        view = self.get(job_id, caller)
        where = view.results.get(fmt)
        if where is None:
            raise errors.JobNotDone(
                f"Job {job_id} is {view.state}: its {fmt} file is written when it succeeds; "
                "the JSON Lines results are there now.",
                details={"state": view.state},
            )
        url = result_files.link(self.blobs, where, ttl_s=self.settings.jobs_results_link_ttl_s)
        return url, result_files.local_path(where)

    # --- cancelling -------------------------------------------------------------------------
    def cancel(self, job_id: str, caller: Caller) -> dict[str, Any]:
        self.get(job_id, caller)
        view = ledger.cancel(self.engine, job_id)
        if view.callback_url:
            tasks.publish_webhook(self.app, self.settings, job_id, "job.cancelled")
        log.info("job %s cancelled", job_id)
        return self.describe(view)
