"""Bodies of ``/v1/auth/whoami``, the model-version endpoints, and the admin endpoints over
evaluations and canary rollouts (:mod:`bentos.model_routes`, :mod:`bentos.admin_routes`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bentos.catalog_schemas import CONTROL, SURROGATE
from imageiq.settings import TAG_PART

# A model name or version as BentoML takes it (imageiq.settings.TAG_PART).
VERSION = rf"^{TAG_PART}$"
MODEL_NAME = VERSION


# --- who is asking -------------------------------------------------------------------------
class KeyOut(BaseModel):
    id: str = Field(description="The key's public id.")
    name: str
    prefix: str = Field(
        description='How the key begins (iiq_<id>_), to recognise it; "(OIDC token)" for '
        "a caller signed in with an OIDC token (its id is oidc:<subject>)."
    )


class WhoamiOut(BaseModel):
    auth_enabled: bool
    key: KeyOut | None = Field(description="The key used; null when authentication is off.")
    scopes: list[str] = Field(
        description="The effective scopes (admin implies classify and label)."
    )


# --- model versions ------------------------------------------------------------------------
class VersionOut(BaseModel):
    version: str
    created_at: datetime = Field(
        description="When it was trained (from its card); for a version known only from "
        "the model repository, when it was published there."
    )
    architecture: str | None = Field(description="Null for a version only in the repository.")
    labels_count: int | None = Field(description="Null for a version only in the repository.")
    metrics: dict[str, float] = Field(description="From training; {} when not read.")
    active: bool = Field(description="The version requests for the name get.")
    served: bool = Field(description="Loaded and served by this replica (a canary too).")
    in_store: bool = Field(description="In this replica's model store (its card read).")
    published: bool | None = Field(
        description="In the model repository, which every replica imports from; null when "
        "the repository could not be listed."
    )


class VersionsOut(BaseModel):
    name: str
    active: str | None = Field(
        description="The version marked active (an activation or promotion), else the one "
        "this replica serves for the name; null when neither."
    )
    versions: list[VersionOut] = Field(description="Newest first.")


class ReliabilityBinOut(BaseModel):
    lower: float
    upper: float
    count: int
    confidence: float | None = Field(description="Mean top-1 confidence; null when empty.")
    accuracy: float | None = Field(description="Share right; null when empty.")


class ReliabilityOut(BaseModel):
    ece: float | None = Field(description="Expected calibration error over the bins.")
    bins: list[ReliabilityBinOut] = Field(description="10 equal-width confidence bins.")


class ClassScoreOut(BaseModel):
    label: str
    precision: float
    recall: float
    f1: float
    support: int = Field(description="Held-out images of the class.")


class EvaluationFileOut(BaseModel):
    labels: list[str]
    confusion_matrix: list[list[int]] = Field(description="Rows true, columns predicted.")
    per_class: list[ClassScoreOut]
    reliability: ReliabilityOut
    images: int | None = Field(None, description="Held-out images scored.")
    top1: float | None = Field(None, description="Held-out top-1 accuracy.")
    temperature: float | None = Field(
        None, description="The calibration temperature applied to the scores, as served."
    )


class VersionDetailOut(VersionOut):
    labels: list[str]
    heads: dict[str, list[str]] = Field(description="Attribute heads and their values.")
    preprocessing: dict[str, Any]
    temperature: dict[str, float] = Field(description="Per head (absent: 1).")
    dataset_fingerprint: str | None
    training_config: dict[str, Any]
    evaluation: EvaluationFileOut | None = Field(
        description="The held-out evaluation registered with the model by training; null "
        "for a model registered without one."
    )


# --- evaluations -----------------------------------------------------------------------------
class EvaluationOut(BaseModel):
    id: int
    model_name: str
    champion_version: str | None
    challenger_version: str | None = Field(description="Null when training itself failed.")
    outcome: Literal["promoted", "canary", "rejected", "failed"]
    primary_metric: str | None
    scores: dict[str, float | None] = Field(
        description="The primary metric of the champion and of the challenger."
    )
    reasons: list[str]
    error: str | None
    actor: str | None
    started_at: datetime
    finished_at: datetime
    dataset: dict[str, Any] = Field(description="The data trained and scored on.")
    golden_set: str | None
    report: dict[str, Any] = Field(description="The comparison report (comparison.json).")


class EvaluationsOut(BaseModel):
    items: list[EvaluationOut] = Field(description="Newest first.")
    limit: int
    next_before: int | None = Field(
        description="`before` of the next page (the last id here); null on the last page."
    )


# --- rollouts --------------------------------------------------------------------------------
class VersionFiguresOut(BaseModel):
    requests: int | None
    errors: int | None
    error_rate: float | None
    mean_confidence: float | None
    p95_latency_ms: float | None
    labelled: int | None = Field(description="Its canary predictions a person labelled since.")
    agreement: float | None = Field(description="Of those, the share whose top-1 was right.")


class RolloutFiguresOut(BaseModel):
    champion: VersionFiguresOut | None
    challenger: VersionFiguresOut | None
    verdict: str | None = Field(None, description="The policy's last verdict: wait, ...")
    reasons: list[str] = Field(default_factory=list)
    at: str | None = Field(None, description="When the figures were taken.")


class RolloutOut(BaseModel):
    id: int
    model_name: str
    champion_version: str
    challenger_version: str
    share: float = Field(description="Of the requests that name no version.")
    state: Literal["running", "promoted", "rolled_back"]
    started_at: datetime
    ended_at: datetime | None
    started_by: str | None
    ended_by: str | None
    reason: str | None = Field(description="Why it ended.")
    last_stats: RolloutFiguresOut | None = Field(
        description="The live figures per version, as last judged (every rollout interval "
        "while it runs); null before the first round."
    )
    policy: dict[str, Any]
    evaluation_id: int | None = Field(description="The retrain run that started it, if one.")


class RolloutsOut(BaseModel):
    model: str
    running: RolloutOut | None
    items: list[RolloutOut] = Field(description="Newest first, the running one too.")


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(pattern=MODEL_NAME, description="The model name.")
    version: str = Field(pattern=VERSION, description="The challenger: a registered version.")
    share: float = Field(0.1, gt=0.0, lt=1.0, description="Of the requests naming no version.")
    promote_after: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="Promote once the challenger served this many requests without being "
        "worse; 0: only by hand.",
    )


class RolloutEndIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        None,
        max_length=500,
        description="Kept with the rollout: printable text, not only spaces.",
        json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"},
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.strip() or CONTROL.search(value) or SURROGATE.search(value)
        ):
            raise ValueError("reason must be printable text")
        return value
