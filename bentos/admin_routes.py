"""The closed loop's admin endpoints (``admin`` scope, under ``/admin/`` so a public ingress
leaves them out): the retrain runs (``GET /v1/admin/evaluations``) and canary rollouts
(``GET``/``POST /v1/admin/rollouts``, ``POST /v1/admin/rollouts/{id}/promote|rollback``).

Starting and ending a canary is :func:`imageiq.rollout.start_by_hand` and
:func:`imageiq.rollout.end_by_hand`, as ``imageiq rollout start|promote|rollback`` does, with
the key as the actor of the audit entry. The change is in the database: every replica's
``RolloutSync`` applies it within ``rollout_interval_s`` (a promotion, as an activation,
within ``reload_interval_s``).

Included by :mod:`bentos.catalog`'s router, so the service mounts it with the catalog.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from bentos.admin_schemas import (
    EvaluationsOut,
    RolloutEndIn,
    RolloutIn,
    RolloutOut,
    RolloutsOut,
)
from bentos.auth import require
from bentos.dbcall import db_call
from bentos.model_routes import repository, serving
from bentos.openapi import ADMITTED, BODY, error_responses
from bentos.state import state
from imageiq import evaluations, rollout
from imageiq.keys import Principal
from imageiq.logs import client_request_id_var, request_id_var
from imageiq.settings import TAG_PART

router = APIRouter(responses=error_responses(*ADMITTED))
_READ_ERRORS = error_responses(403, 422)
_END_ERRORS = error_responses(
    403,
    404,
    409,
    *BODY,
    s404="No rollout with this id.",
    s409="The rollout had ended already (rollout_ended).",
)
_BIGINT = 2**63 - 1  # the largest id the tables hold
RolloutId = Path(ge=1, le=_BIGINT, description="The rollout's id.")


def _model(description: str) -> Any:
    return Query(None, pattern=rf"^{TAG_PART}$", description=description)


def _requests() -> dict[str, str | None]:
    return {"request_id": request_id_var.get(), "client_request_id": client_request_id_var.get()}


@router.get(
    "/admin/evaluations",
    response_model=EvaluationsOut,
    responses=_READ_ERRORS,
    summary="Retrain runs: champion and challenger scores, the decision, the report",
)
async def list_evaluations(
    request: Request,
    principal: Principal = Depends(require("admin")),
    model: str | None = _model("A model name (default: every name)."),
    limit: int = Query(20, ge=1, le=100),
    before: int | None = Query(
        None, ge=1, le=_BIGINT, description="A page's next_before, for the page after it."
    ),
) -> EvaluationsOut:
    """Newest first. ``report`` is the comparison report the run wrote (comparison.json)."""
    items, next_before = await db_call(
        state(request).backends,
        evaluations.list_evaluations,
        model_name=model,
        limit=limit,
        before=before,
    )
    return EvaluationsOut.model_validate(
        {"items": items, "limit": limit, "next_before": next_before}
    )


@router.get(
    "/admin/rollouts",
    response_model=RolloutsOut,
    responses=_READ_ERRORS,
    summary="A model's canary rollouts: the running one and the latest",
)
async def list_rollouts(
    request: Request,
    principal: Principal = Depends(require("admin")),
    model: str | None = _model("A model name (default: the active model's)."),
    limit: int = Query(20, ge=1, le=100),
) -> RolloutsOut:
    """The running canary (null when none) with its live figures as last judged, and the
    latest rollouts of the name, newest first."""
    s = state(request)
    active = s.pool.active
    name = model or (active.model.name if active is not None else s.settings.model_name)
    rows = await db_call(s.backends, rollout.latest, name, limit=limit)
    running = next((r for r in rows if r.state == "running"), None)
    return RolloutsOut(
        model=name,
        running=_rollout_out(running) if running is not None else None,
        items=[_rollout_out(r) for r in rows],
    )


@router.post(
    "/admin/rollouts",
    response_model=RolloutOut,
    status_code=201,
    responses=error_responses(
        403,
        404,
        409,
        *BODY,
        s404="No such version of the model (model_not_found).",
        s409="A canary of the name runs (rollout_conflict), or there is no active version "
        "to compare with (no_active_version).",
        s422="An invalid field, or the challenger is the active version.",
    ),
    summary="Start a canary: a share of a model's requests to a challenger version",
)
async def start_rollout(
    request: Request, body: RolloutIn, principal: Principal = Depends(require("admin"))
) -> RolloutOut:
    """Against the champion: the version marked active, else the one served here. The
    challenger comes from this replica's store or the model repository, and is published so
    that every replica can serve it. 404 ``model_not_found`` (unknown version), 422
    ``invalid_parameter`` (the challenger is the active version), 409 ``rollout_conflict``
    (a canary of the name runs) or ``no_active_version`` (nothing to compare with)."""
    s = state(request)
    started = await db_call(
        s.backends,
        rollout.start_by_hand,
        repo=repository(request),
        model_name=body.model,
        challenger_version=body.version,
        share=body.share,
        policy=rollout.RolloutPolicy(promote_after=body.promote_after),
        actor=principal.key_id,
        serving=serving(s.pool).versions.get(body.model),
        **_requests(),
    )
    return _rollout_out(started)


@router.post(
    "/admin/rollouts/{rollout_id}/promote",
    response_model=RolloutOut,
    responses=_END_ERRORS,
    summary="Promote a running canary: its challenger becomes the active version",
)
async def promote_rollout(
    request: Request,
    rollout_id: int = RolloutId,
    body: RolloutEndIn | None = None,
    principal: Principal = Depends(require("admin")),
) -> RolloutOut:
    """Every replica serves the challenger to every request within its reload interval.
    404 ``rollout_not_found``; 409 ``rollout_ended`` when it had ended already."""
    return await _end(request, rollout_id, "promoted", body, principal)


@router.post(
    "/admin/rollouts/{rollout_id}/rollback",
    response_model=RolloutOut,
    responses=_END_ERRORS,
    summary="Roll back a running canary: every request goes to the champion again",
)
async def rollback_rollout(
    request: Request,
    rollout_id: int = RolloutId,
    body: RolloutEndIn | None = None,
    principal: Principal = Depends(require("admin")),
) -> RolloutOut:
    """404 ``rollout_not_found``; 409 ``rollout_ended`` when it had ended already."""
    return await _end(request, rollout_id, "rolled_back", body, principal)


async def _end(
    request: Request,
    rollout_id: int,
    end_state: Literal["promoted", "rolled_back"],
    body: RolloutEndIn | None,
    principal: Principal,
) -> RolloutOut:
    verb = "promoted" if end_state == "promoted" else "rolled back"
    ended = await db_call(
        state(request).backends,
        rollout.end_by_hand,
        rollout_id,
        state=end_state,
        actor=principal.key_id,
        reason=(body.reason if body is not None else None) or f"{verb} by hand",
        **_requests(),
    )
    return _rollout_out(ended)


def _rollout_out(r: rollout.RolloutInfo) -> RolloutOut:
    """The rollout, its stored figures (RolloutSync's, per version) per role."""
    figures = r.last_stats or {}
    versions = figures.get("versions") or {}

    def of(version: str) -> dict[str, Any] | None:
        found = versions.get(version)
        if not isinstance(found, dict):
            return None
        keys = ("requests", "errors", "error_rate", "mean_confidence", "p95_latency_ms")
        return {
            **{k: found.get(k) for k in keys},
            "labelled": found.get("feedback"),
            "agreement": found.get("agreement"),
        }

    last = None
    if versions:
        last = {
            "champion": of(r.champion_version),
            "challenger": of(r.challenger_version),
            "verdict": figures.get("verdict"),
            "reasons": list(figures.get("reasons") or []),
            "at": figures.get("at"),
        }
    return RolloutOut.model_validate(
        {
            "id": r.id,
            "model_name": r.model_name,
            "champion_version": r.champion_version,
            "challenger_version": r.challenger_version,
            "share": r.share,
            "state": r.state,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "started_by": r.started_by,
            "ended_by": r.ended_by,
            "reason": r.reason,
            "last_stats": last,
            "policy": r.policy.model_dump(),
            "evaluation_id": r.evaluation_id,
        }
    )
