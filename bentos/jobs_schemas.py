"""Request and response bodies of ``/v1/jobs`` (the API's view of :mod:`imageiq.jobs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imageiq.classify import MAX_TOP_K
from imageiq.settings import MODEL_TAG


class JobSource(BaseModel):
    """Exactly one of the three."""

    model_config = ConfigDict(extra="forbid")

    s3_prefix: str | None = Field(
        None,
        max_length=1100,
        description="Every object under s3://bucket/prefix (an allowed bucket).",
        examples=["s3://imageiq-images/catalogue/2026/"],
    )
    manifest: str | None = Field(
        None,
        max_length=1100,
        description="s3://bucket/key of a .jsonl, .csv or text manifest: keys relative to its "
        "folder, or s3:// URIs in allowed buckets.",
    )
    image_ids: list[str] | None = Field(
        None, description="Stored images, by id (sha256).", max_length=10_000_000
    )

    @model_validator(mode="after")
    def _one(self) -> JobSource:
        given = [n for n in ("s3_prefix", "manifest", "image_ids") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of s3_prefix, manifest, image_ids (got {given or 'none'})"
            )
        return self


class JobOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        pattern=MODEL_TAG,
        description="A served model (name or name:version); the active one if omitted. The "
        "version is fixed when the job is accepted.",
    )
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    callback_url: str | None = Field(
        None,
        max_length=2048,
        description="Called (signed POST) when the job ends; must resolve to a public address.",
    )
    progress_webhooks: bool = Field(
        False, description="Also call back as the job progresses (at most every 30 s)."
    )


class JobRequest(JobOptionsIn):
    source: JobSource


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    model: str = Field(description="name:version, fixed at submission.")
    top_k: int
    min_confidence: float
    source: dict[str, Any]
    total: int
    done: int
    failed: int
    pending: int
    images_per_second: float | None
    eta_seconds: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    callback_url: str | None
    results: dict[str, str] = Field(
        description="Once succeeded: links to the results as parquet and csv (presigned, or "
        "this API's path)."
    )
    error: str | None


class JobCreated(BaseModel):
    job: JobOut
    webhook_secret: str | None = Field(
        None,
        description="Signs this job's webhooks (ImageIQ-Signature: t=...,v1=HMAC-SHA256 of "
        "'<t>.<body>'). Shown only now.",
    )


class JobsOut(BaseModel):
    jobs: list[JobOut]
