"""Reading the ``evaluations`` table: one row per ``imageiq retrain`` run (the champion and
challenger scored on the same data, the decision and the comparison report), behind
``GET /v1/admin/evaluations``. The retrain writes them (training/retrain.py, ``record``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from imageiq.db.schema import Evaluation


def list_evaluations(
    engine: Engine, *, model_name: str | None, limit: int, before: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Runs newest first (by id: rows are written when a run finishes), of one model name
    or all; keyset pages: ``before`` is the last id of the previous page. Returns the page
    and the ``before`` of the next one (None on the last)."""
    query = select(Evaluation).order_by(Evaluation.id.desc()).limit(limit + 1)
    if model_name is not None:
        query = query.where(Evaluation.model_name == model_name)
    if before is not None:
        query = query.where(Evaluation.id < before)
    with Session(engine) as session:
        rows = list(session.scalars(query))
    page = [_evaluation_out(row) for row in rows[:limit]]
    return page, (page[-1]["id"] if len(rows) > limit else None)


def _evaluation_out(row: Evaluation) -> dict[str, Any]:
    return {
        "id": row.id,
        "model_name": row.model_name,
        "champion_version": row.champion_version,
        "challenger_version": row.challenger_version,
        "outcome": row.outcome,
        "primary_metric": row.primary_metric,
        "scores": {"champion": row.champion_score, "challenger": row.challenger_score},
        "reasons": list(row.reasons or []),
        "error": row.error,
        "actor": row.actor,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "dataset": dict(row.dataset or {}),
        "golden_set": row.golden_set,
        "report": dict(row.report or {}),
    }
