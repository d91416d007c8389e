"""Jobs in the metadata database: created with their items, answered item by item, finished
once. Every write is idempotent, because a chunk may run twice (a worker killed mid-chunk,
a visibility timeout passed): a result is inserted once per job and image sha256, an item
goes from ``pending`` to ``done``/``failed`` once, and a job ends once (the worker whose
update ends it is the one that writes its results files and sends its webhook).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from imageiq import errors
from imageiq.catalog import insert_ignore
from imageiq.db.schema import Job, JobItem, JobResult, WebhookDelivery, utcnow

ACTIVE = ("queued", "running")
_INSERT_BATCH = 10_000


@dataclass(frozen=True)
class NewJob:
    model_name: str
    model_version: str
    top_k: int
    min_confidence: float
    source: dict[str, Any]
    chunk_size: int
    callback_url: str | None = None
    webhook_secret: str | None = None
    progress_webhooks: bool = False
    created_by: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class JobView:
    """A job and its totals, as the API and the CLI show it."""

    id: str
    state: str
    model: str
    top_k: int
    min_confidence: float
    source: dict[str, Any]
    total: int
    done: int
    failed: int
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    callback_url: str | None
    results: dict[str, str]
    error: str | None
    progress_webhooks: bool = False

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed

    @property
    def images_per_second(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        seconds = (end - self.started_at).total_seconds()
        answered = self.done + self.failed
        return answered / seconds if seconds > 0 and answered else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.images_per_second
        if self.state not in ACTIVE or rate is None:
            return None
        return self.pending / rate


@dataclass(frozen=True)
class ItemOutcome:
    """How a worker answered one item: a result (``result``) or an error (``error_code``)."""

    position: int
    sha256: str | None
    result: dict[str, Any] | None = None  # label, score, top_k, attributes, width, height
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class Written:
    done: int = 0
    failed: int = 0
    skipped: list[int] = field(default_factory=list)  # already answered (a re-delivery)


def new_id() -> str:
    return uuid.uuid4().hex


def create(engine: Engine, job: NewJob, refs: Sequence[str], *, job_id: str) -> None:
    """The job and its items, in one transaction: all of it or nothing."""
    with engine.begin() as conn:
        conn.execute(
            insert(Job).values(
                id=job_id,
                state="queued",
                model_name=job.model_name,
                model_version=job.model_version,
                top_k=job.top_k,
                min_confidence=job.min_confidence,
                source=job.source,
                total=len(refs),
                chunk_size=job.chunk_size,
                callback_url=job.callback_url,
                webhook_secret=job.webhook_secret,
                progress_webhooks=job.progress_webhooks,
                created_by=job.created_by,
                request_id=job.request_id,
                created_at=utcnow(),
                results={},
            )
        )
        for start in range(0, len(refs), _INSERT_BATCH):
            conn.execute(
                insert(JobItem),
                [
                    {"job_id": job_id, "position": start + i, "ref": ref, "state": "pending"}
                    for i, ref in enumerate(refs[start : start + _INSERT_BATCH])
                ],
            )


def drop(engine: Engine, job_id: str) -> None:
    """A job whose chunks could not be queued: gone, as if never submitted."""
    with engine.begin() as conn:
        conn.execute(delete(JobItem).where(JobItem.job_id == job_id))
        conn.execute(delete(Job).where(Job.id == job_id))


def view(engine: Engine, job_id: str) -> JobView:
    with engine.connect() as conn:
        job = conn.execute(select(Job.__table__).where(Job.id == job_id)).mappings().first()
        if job is None:
            raise errors.JobNotFound(f"No job {job_id[:64]!r}.")
        counts = dict(
            conn.execute(
                select(JobItem.state, func.count())
                .where(JobItem.job_id == job_id)
                .group_by(JobItem.state)
            ).all()
        )
    return _view(job, counts)


def _view(job: Any, counts: dict[str, int]) -> JobView:
    return JobView(
        id=job["id"],
        state=job["state"],
        model=f"{job['model_name']}:{job['model_version']}",
        top_k=job["top_k"],
        min_confidence=job["min_confidence"],
        source=job["source"],
        total=job["total"],
        done=int(counts.get("done", 0)),
        failed=int(counts.get("failed", 0)),
        created_by=job["created_by"],
        created_at=job["created_at"],
        started_at=job["started_at"],
        finished_at=job["finished_at"],
        callback_url=job["callback_url"],
        results=dict(job["results"] or {}),
        error=job["error"],
        progress_webhooks=bool(job["progress_webhooks"]),
    )


def recent(engine: Engine, *, created_by: str | None, limit: int) -> list[JobView]:
    """The newest jobs (of one key, or of all when ``created_by`` is None)."""
    query = select(Job.id).order_by(Job.created_at.desc()).limit(limit)
    if created_by is not None:
        query = query.where(Job.created_by == created_by)
    with engine.connect() as conn:
        ids = list(conn.scalars(query))
    return [view(engine, i) for i in ids]


def pending_items(engine: Engine, job_id: str, first: int, last: int) -> list[tuple[int, str]]:
    """The chunk's items still to answer, (position, ref), in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(JobItem.position, JobItem.ref)
            .where(
                JobItem.job_id == job_id,
                JobItem.position >= first,
                JobItem.position < last,
                JobItem.state == "pending",
            )
            .order_by(JobItem.position)
        ).all()
    return [(int(p), str(r)) for p, r in rows]


def start(engine: Engine, job_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="running", started_at=utcnow())
        )


def record(engine: Engine, job_id: str, outcomes: Sequence[ItemOutcome]) -> Written:
    """Writes a batch of answers in one transaction; an item already answered keeps its
    first answer (and is counted in ``skipped``)."""
    written = Written()
    now = utcnow()
    results = [
        {"job_id": job_id, "sha256": o.sha256, "created_at": now, **o.result}
        for o in outcomes
        if o.result is not None and o.sha256 is not None
    ]
    with engine.begin() as conn:
        insert_ignore(conn, JobResult, list({r["sha256"]: r for r in results}.values()))
        for o in outcomes:
            state = "done" if o.result is not None else "failed"
            changed = conn.execute(
                update(JobItem)
                .where(
                    JobItem.job_id == job_id,
                    JobItem.position == o.position,
                    JobItem.state == "pending",
                )
                .values(
                    state=state,
                    sha256=o.sha256,
                    error_code=o.error_code,
                    error_message=(o.error_message or "")[:1000] or None,
                    finished_at=now,
                )
            ).rowcount
            if not changed:
                written.skipped.append(o.position)
            elif state == "done":
                written.done += 1
            else:
                written.failed += 1
    return written


def pending_count(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                select(func.count())
                .select_from(JobItem)
                .where(JobItem.job_id == job_id, JobItem.state == "pending")
            )
            or 0
        )


def finish(engine: Engine, job_id: str, *, results: dict[str, str]) -> bool:
    """Ends a running job as succeeded; True for the one caller whose update did it."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "running")
            .values(state="succeeded", finished_at=utcnow(), results=results)
        ).rowcount
    return bool(changed)


def fail(engine: Engine, job_id: str, *, error: str) -> bool:
    """Ends a job that cannot run (its model cannot be loaded, say); True if this did."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE))
            .values(state="failed", finished_at=utcnow(), error=error[:2000])
        ).rowcount
    return bool(changed)


def cancel(engine: Engine, job_id: str) -> JobView:
    """Stops a queued or running job: its chunks still queued find it cancelled and skip,
    and a chunk in progress stops at its next batch. 409 once it has ended."""
    with engine.begin() as conn:
        changed = conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE))
            .values(state="cancelled", finished_at=utcnow())
        ).rowcount
    current = view(engine, job_id)
    if not changed:
        raise errors.JobFinished(
            f"Job {job_id} already ended ({current.state}).", details={"state": current.state}
        )
    return current


def state_of(engine: Engine, job_id: str) -> str | None:
    with engine.connect() as conn:
        found = conn.scalar(select(Job.state).where(Job.id == job_id))
    return None if found is None else str(found)


def iter_results(engine: Engine, job_id: str, *, page: int = 2000) -> Iterator[dict[str, Any]]:
    """Every item with its answer, in submission order, read a page at a time."""
    after = -1
    while True:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    select(
                        JobItem.position,
                        JobItem.ref,
                        JobItem.state,
                        JobItem.sha256,
                        JobItem.error_code,
                        JobItem.error_message,
                        JobResult.label,
                        JobResult.score,
                        JobResult.top_k,
                        JobResult.attributes,
                        JobResult.width,
                        JobResult.height,
                    )
                    .outerjoin(
                        JobResult,
                        and_(
                            JobResult.job_id == JobItem.job_id, JobResult.sha256 == JobItem.sha256
                        ),
                    )
                    .where(JobItem.job_id == job_id, JobItem.position > after)
                    .order_by(JobItem.position)
                    .limit(page)
                )
                .mappings()
                .all()
            )
        for row in rows:
            yield result_line(row)
        if len(rows) < page:
            return
        after = int(rows[-1]["position"])


def result_line(row: Any) -> dict[str, Any]:
    """One item as a line of the results (JSON Lines, Parquet, CSV)."""
    line: dict[str, Any] = {
        "position": row["position"],
        "ref": row["ref"],
        "state": row["state"],
        "sha256": row["sha256"],
    }
    if row["state"] == "done":
        line.update(
            label=row["label"],
            score=row["score"],
            predictions=row["top_k"],
            attributes=row["attributes"],
            width=row["width"],
            height=row["height"],
        )
    elif row["state"] == "failed":
        line["error"] = {"code": row["error_code"], "message": row["error_message"]}
    return line


def record_delivery(
    engine: Engine,
    job_id: str,
    *,
    event: str,
    attempt: int,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(WebhookDelivery).values(
                job_id=job_id,
                event=event,
                attempt=attempt,
                status_code=status_code,
                error=(error or "")[:1000] or None,
                duration_ms=duration_ms,
                at=utcnow(),
            )
        )


def deliveries(engine: Engine, job_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(WebhookDelivery.__table__)
            .where(WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        ).mappings()
        return [dict(r) for r in rows]


def stale_chunks(engine: Engine, job_id: str) -> list[int]:
    """Positions starting the chunks of a running job that still hold pending items."""
    size = chunk_size(engine, job_id)
    with engine.connect() as conn:
        positions = conn.scalars(
            select(JobItem.position).where(JobItem.job_id == job_id, JobItem.state == "pending")
        )
        return sorted({int(p) // size * size for p in positions})


def running_jobs(engine: Engine) -> list[tuple[str, datetime | None]]:
    """Running jobs and when an item of each was last answered (None: none yet)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, func.max(JobItem.finished_at))
            .outerjoin(JobItem, JobItem.job_id == Job.id)
            .where(Job.state == "running")
            .group_by(Job.id)
        ).all()
    return [(str(i), at) for i, at in rows]


def active_totals(engine: Engine) -> tuple[int, int]:
    """(jobs queued or running, their images not answered yet), for the gauges."""
    with engine.connect() as conn:
        jobs = int(conn.scalar(select(func.count()).where(Job.state.in_(ACTIVE))) or 0)
        pending = int(
            conn.scalar(
                select(func.count())
                .select_from(JobItem)
                .join(Job, Job.id == JobItem.job_id)
                .where(Job.state.in_(ACTIVE), JobItem.state == "pending")
            )
            or 0
        )
    return jobs, pending


def webhook_secret(engine: Engine, job_id: str) -> str | None:
    with engine.connect() as conn:
        found = conn.scalar(select(Job.webhook_secret).where(Job.id == job_id))
    return None if found is None else str(found)


def chunk_size(engine: Engine, job_id: str) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(Job.chunk_size).where(Job.id == job_id)) or 1)


def as_dict(view: JobView, *, links: dict[str, str]) -> dict[str, Any]:
    """The job as the API, the CLI and the webhooks show it."""
    rate = view.images_per_second
    eta = view.eta_seconds
    return {
        "id": view.id,
        "state": view.state,
        "model": view.model,
        "top_k": view.top_k,
        "min_confidence": view.min_confidence,
        "source": view.source,
        "total": view.total,
        "done": view.done,
        "failed": view.failed,
        "pending": view.pending,
        "images_per_second": None if rate is None else round(rate, 3),
        "eta_seconds": None if eta is None else round(eta, 1),
        "created_at": view.created_at,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "callback_url": view.callback_url,
        "results": links,
        "error": view.error,
    }
