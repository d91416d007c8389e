"""The versions known for a model name, behind ``GET /v1/models/{name}/versions``: those in
this replica's model store (:mod:`imageiq.registry`, with their cards) and those published
to the model repository (:mod:`imageiq.model_repo`, one listing: a version only there is
named with its publishing time, its card unread until it is asked for by itself).

Which version is *active* follows the activations: the version marked active in the models
table (an activation or a promotion, which every replica applies), else the one this
replica serves for the name. *Served* versions are the ones this replica's pool holds,
a canary's challenger too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from imageiq.errors import ModelNotFound, StorageUnavailable
from imageiq.model_repo import ModelRepository
from imageiq.registry import (
    EVALUATION_FILE,
    RegisteredModel,
    list_models,
    read_model_file,
)
from imageiq.rollout import active_version

log = logging.getLogger("imageiq.models")


@dataclass(frozen=True)
class Serving:
    """What this replica serves: every tag, and per model name the version a request that
    names only the name gets (canaries aside)."""

    tags: frozenset[str]
    versions: dict[str, str]


def list_versions(
    engine: Engine, name: str, *, repo: ModelRepository, serving: Serving
) -> dict[str, Any]:
    """``{"name", "active", "versions"}``, newest first; ``ModelNotFound`` when neither the
    store nor the repository knows the name."""
    local = list_models(name)
    published = _published(repo, name)
    if not local and not published:
        raise ModelNotFound(
            f"No model {name!r} in the model store nor in the model repository.",
            details={"model": name},
        )
    active = active_version(engine, name) or serving.versions.get(name)
    versions = [_summary(m, active=active, serving=serving, published=published) for m in local]
    known = {m.version for m in local}
    for version, at in (published or {}).items():
        if version not in known:
            versions.append(
                {
                    "version": version,
                    "created_at": at,
                    "architecture": None,
                    "labels_count": None,
                    "metrics": {},
                    "active": version == active,
                    "served": f"{name}:{version}" in serving.tags,
                    "in_store": False,
                    "published": True,
                }
            )
    versions.sort(key=lambda v: (v["created_at"], v["version"]), reverse=True)
    return {"name": name, "active": active, "versions": versions}


def version_detail(
    engine: Engine, name: str, version: str, *, repo: ModelRepository, serving: Serving
) -> dict[str, Any]:
    """One version with its card (labels, heads, training config) and its held-out
    evaluation (None for a model registered without one). A version only in the repository
    is imported into this replica's store first, as an activation would;
    ``ModelNotFound`` when neither has it."""
    model = repo.ensure_local(f"{name}:{version}")
    active = active_version(engine, name) or serving.versions.get(name)
    card = model.card
    return {
        **_summary(model, active=active, serving=serving, published=_published(repo, name)),
        "labels": card.labels,
        "heads": card.heads,
        "preprocessing": card.preprocessing.model_dump(),
        "temperature": card.temperature,
        "dataset_fingerprint": card.dataset_fingerprint,
        "training_config": card.training_config,
        "evaluation": read_evaluation(model),
    }


def read_evaluation(model: RegisteredModel) -> dict[str, Any] | None:
    """The ``evaluation.json`` training registered with the model; None without one (or
    when it cannot be read, which is logged)."""
    try:
        found = json.loads(read_model_file(model, EVALUATION_FILE))
    except ModelNotFound:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable %s: %s", model.tag, EVALUATION_FILE, e)
        return None
    return found if isinstance(found, dict) else None


def _published(repo: ModelRepository, name: str) -> dict[str, Any] | None:
    """The repository's versions of ``name``; None when it cannot be listed now (the
    store's versions are still answered)."""
    try:
        return repo.published(name)
    except StorageUnavailable as e:
        log.warning("listing the model repository failed: %s", e.message)
        return None


def _summary(
    model: RegisteredModel,
    *,
    active: str | None,
    serving: Serving,
    published: dict[str, Any] | None,
) -> dict[str, Any]:
    card = model.card
    return {
        "version": model.version,
        "created_at": card.created_at,
        "architecture": card.architecture,
        "labels_count": len(card.labels),
        "metrics": card.metrics,
        "active": model.version == active,
        "served": model.tag in serving.tags,
        "in_store": True,
        "published": None if published is None else model.version in published,
    }
