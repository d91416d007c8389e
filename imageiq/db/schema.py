"""The metadata schema (SQLAlchemy 2 declarative models), the one definition the Alembic
migrations are written against. The same models serve PostgreSQL and the embedded SQLite.

An image's id is its content's SHA-256 (hex): uploading the same bytes twice gives the same
image, and the object store keys are content-addressed the same way. Predictions are kept
for every classified image, stored or not, so they reference images by hash, not by a
foreign key; labels exist only for stored images and go with them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# A 64-bit key on PostgreSQL, SQLite's auto-incrementing INTEGER rowid there.
BigId = BigInteger().with_variant(Integer(), "sqlite")

LABEL_SOURCES = ("user", "admin", "model")
MODEL_STATUSES = ("staged", "active", "retired")
EVALUATION_OUTCOMES = ("promoted", "canary", "rejected", "failed")
ROLLOUT_STATES = ("running", "promoted", "rolled_back")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_ITEM_STATES = ("pending", "done", "failed")


def _now() -> Any:
    return func.now()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # a time without a zone is taken as UTC
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Image(Base):
    """A stored upload: the object lives in the store under ``storage_key``."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    uploaded_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, server_default=_now(), index=True
    )


class Prediction(Base):
    """One served prediction. ``id`` is minted when the request is answered, so a record
    replayed after a database outage is written once, never twice."""

    __tablename__ = "predictions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(255), index=True)  # the top-1 label
    score: Mapped[float] = mapped_column(Float)  # its score
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{label, score}], best first
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)  # {head: {label, score}}
    latency_ms: Mapped[float] = mapped_column(Float)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))  # the server's
    client_request_id: Mapped[str | None] = mapped_column(String(64))  # the X-Request-ID sent
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)

    __table_args__ = (Index("ix_predictions_model", "model_name", "model_version"),)


class Label(Base):
    """Ground truth given for a stored image: the input of continuous retraining."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_sha256: Mapped[str] = mapped_column(
        ForeignKey("images.sha256", ondelete="CASCADE"), index=True
    )
    label: Mapped[str | None] = mapped_column(String(255), index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, server_default=_now(), index=True
    )
    request_id: Mapped[str | None] = mapped_column(String(64))  # the server's
    client_request_id: Mapped[str | None] = mapped_column(String(64))  # the X-Request-ID sent

    __table_args__ = (CheckConstraint(f"source IN {LABEL_SOURCES}", name="source"),)


class Model(Base):
    """A model version known to the service, and whether it is the one requests get."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="staged")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, server_default=_now(), onupdate=utcnow
    )

    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_models_name_version"),
        CheckConstraint(f"status IN {MODEL_STATUSES}", name="status"),
    )


class ApiKey(Base):
    """An API key: its public id, and a salted (and peppered) hash of its secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(128))
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=_now())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AuditEntry(Base):
    """Who did what: key management, model activation, deletion, admin labels, and every
    refused attempt (``auth.denied``). ``actor`` is the key id presented, also when the
    attempt was refused (never the secret); ``request_id`` is the server's own id of the
    request, ``client_request_id`` the ``X-Request-ID`` the client sent, kept apart because
    a client chooses it freely."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(
        UtcDateTime, default=utcnow, server_default=_now(), index=True
    )
    actor: Mapped[str | None] = mapped_column(String(64))  # an API key id, or cli:<user>
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_request_id: Mapped[str | None] = mapped_column(String(64))


class Tombstone(Base):
    """An image forgotten (``DELETE /v1/admin/images/{id}``), kept so that no replica writes
    it back: a record of it accepted before ``deleted_at`` is dropped by every writer, one
    accepted after is a fresh upload of the same bytes (:mod:`imageiq.tombstones`).
    ``object_deleted_at`` is empty while its object may still be in the store (the
    deletion's own attempt failed, or a writer put it back): the sweep finishes it."""

    __tablename__ = "tombstones"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(64))  # an API key id, or cli:<user>
    request_id: Mapped[str | None] = mapped_column(String(64))  # the server's
    object_deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class GoldenImage(Base):
    """An image of a pinned golden set: frozen with the label it had when an admin froze
    the set, so every retrain is judged on the same images with the same answers. Golden
    images never train a model. Forgetting the image removes it from its sets."""

    __tablename__ = "golden_images"

    set_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    image_sha256: Mapped[str] = mapped_column(
        ForeignKey("images.sha256", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(255))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    frozen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, server_default=_now())
    frozen_by: Mapped[str | None] = mapped_column(String(64))


class Evaluation(Base):
    """One ``imageiq retrain`` run: the champion and the challenger it trained, scored on
    the same held-out split and golden set, and what was decided (``outcome``)."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    champion_version: Mapped[str | None] = mapped_column(String(64))
    challenger_version: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    primary_metric: Mapped[str | None] = mapped_column(String(32))
    champion_score: Mapped[float | None] = mapped_column(Float)
    challenger_score: Mapped[float | None] = mapped_column(Float)
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    golden_set: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(String(2000))
    actor: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)

    __table_args__ = (CheckConstraint(f"outcome IN {EVALUATION_OUTCOMES}", name="outcome"),)


class Rollout(Base):
    """A canary: ``share`` of the requests for ``model_name`` (those that name no version)
    go to ``challenger_version`` while it runs; it ends promoted or rolled back. At most one
    runs per model name (:mod:`imageiq.rollout` takes a lock to start one)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(64))
    champion_version: Mapped[str] = mapped_column(String(64))
    challenger_version: Mapped[str] = mapped_column(String(64))
    share: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="running")
    policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evaluation_id: Mapped[int | None] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_by: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(2000))
    last_stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        Index("ix_rollouts_model_state", "model_name", "state"),
        CheckConstraint(f"state IN {ROLLOUT_STATES}", name="state"),
    )


class Job(Base):
    """A bulk classification job (``POST /v1/jobs``, :mod:`imageiq.jobs`): its options, the
    model version every worker runs, and how it ended. Its images are ``job_items``."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    top_k: Mapped[int] = mapped_column(Integer)
    min_confidence: Mapped[float] = mapped_column(Float)
    source: Mapped[dict[str, Any]] = mapped_column(JSON)  # kind and where, never a secret
    total: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    progress_webhooks: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str | None] = mapped_column(String(64))  # an API key id, or cli:<user>
    request_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # format -> object key
    error: Mapped[str | None] = mapped_column(String(2000))

    __table_args__ = (CheckConstraint(f"state IN {JOB_STATES}", name="state"),)


class JobItem(Base):
    """One input of a job, in submission order: where its bytes are (``ref``), and once a
    worker answered it, the sha256 of those bytes (its result is ``job_results``) or its
    error. ``pending`` -> ``done`` | ``failed`` happens once (a re-delivered chunk skips it)."""

    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(1100))  # s3://bucket/key or store:<key>
    state: Mapped[str] = mapped_column(String(8), default="pending")
    sha256: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(1000))
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_job_items_job_state", "job_id", "state"),
        CheckConstraint(f"state IN {JOB_ITEM_STATES}", name="state"),
    )


class JobResult(Base):
    """A job's answer for an image, keyed by the job and the image's sha256: written once
    (inserts that meet an existing row do nothing), whichever worker and delivery get there."""

    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{label, score}], best first
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)  # {head: {label, score}}
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One attempt to deliver a job's webhook: kept whatever its outcome."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))  # job.succeeded, job.progress, ...
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(1000))
    duration_ms: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
