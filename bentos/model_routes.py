"""``GET /v1/auth/whoami`` (any valid key: who it is and what it may do) and the versions of a
model name, ``GET /v1/models/{name}/versions[/{version}]`` (``classify``, as ``/v1/models``):
the local store and the model repository, which is active and served, and each version's
card and held-out evaluation (:mod:`imageiq.model_versions`).

Included by :mod:`bentos.catalog`'s router, so the service mounts it with the catalog.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Path, Request, Security
from pydantic import ValidationError

from bentos.admin_schemas import (
    MODEL_NAME,
    VERSION,
    EvaluationFileOut,
    KeyOut,
    VersionDetailOut,
    VersionsOut,
    WhoamiOut,
)
from bentos.auth import bearer, charge, require
from bentos.dbcall import db_call
from bentos.gate import principal_of
from bentos.http import note
from bentos.openapi import ADMITTED, error_responses
from bentos.state import state
from imageiq import model_versions
from imageiq.keys import SCOPES, Principal
from imageiq.model_repo import ModelRepository
from imageiq.pool import ModelPool

log = logging.getLogger("imageiq.service")
# What whoami shows as the prefix of a caller signed in with an OIDC token (no key).
OIDC_PREFIX = "(OIDC token)"

router = APIRouter(responses=error_responses(*ADMITTED))
_VERSIONS_ERRORS = error_responses(
    403, 404, 422, s404="Neither the model store nor the model repository knows it."
)
ModelName = Path(pattern=MODEL_NAME, description="A model name.")


async def caller(request: Request, _: object = Security(bearer)) -> Principal:
    """The key the gate admitted, whatever its scopes; charged one request."""
    principal = principal_of(request.scope)
    note(request.scope, key=principal.key_id)
    await charge(request, principal, cost=1)
    return principal


def repository(request: Request) -> ModelRepository:
    """The model repository, one per app (its S3 client is made once)."""
    app_state = request.app.state
    found = getattr(app_state, "model_repository", None)
    if found is None:
        found = app_state.model_repository = ModelRepository(state(request).settings)
    return found


def serving(pool: ModelPool) -> model_versions.Serving:
    """The pool's tags, and per name the version a request naming only the name gets (the
    active model's for its name; else the first served: a canary's challenger comes later)."""
    versions: dict[str, str] = {}
    for served in pool.models.values():
        versions.setdefault(served.model.name, served.model.version)
    if pool.active is not None:
        versions[pool.active.model.name] = pool.active.model.version
    return model_versions.Serving(frozenset(pool.models), versions)


@router.get(
    "/auth/whoami",
    response_model=WhoamiOut,
    summary="The API key used, and its effective scopes",
)
async def whoami(request: Request, principal: Principal = Depends(caller)) -> WhoamiOut:
    """Any valid key may ask. ``scopes`` are the effective ones (admin implies classify and
    label); with authentication off, every scope and no key."""
    if not state(request).settings.auth_enabled:
        return WhoamiOut(auth_enabled=False, key=None, scopes=list(SCOPES))
    return WhoamiOut(
        auth_enabled=True,
        key=KeyOut(
            id=principal.key_id,
            name=principal.name,
            prefix=OIDC_PREFIX
            if principal.key_id.startswith("oidc")
            else f"iiq_{principal.key_id}_",
        ),
        scopes=[s for s in SCOPES if principal.allows(s)],
    )


@router.get(
    "/models/{name}/versions",
    response_model=VersionsOut,
    responses=_VERSIONS_ERRORS,
    summary="The versions of a model name",
)
async def list_versions(
    request: Request,
    name: str = ModelName,
    principal: Principal = Depends(require("classify")),
) -> VersionsOut:
    """Every version in this replica's model store and in the model repository, newest
    first: which is active and which are served here. A version only in the repository
    comes without its card (architecture, labels_count null). 404 ``model_not_found`` when
    neither knows the name."""
    s = state(request)
    found = await db_call(
        s.backends,
        model_versions.list_versions,
        name,
        repo=repository(request),
        serving=serving(s.pool),
    )
    return VersionsOut.model_validate(found)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=VersionDetailOut,
    responses=_VERSIONS_ERRORS,
    summary="One version of a model: its card and held-out evaluation",
)
async def get_version(
    request: Request,
    name: str = ModelName,
    version: str = Path(pattern=VERSION, description="A version (or latest)."),
    principal: Principal = Depends(require("classify")),
) -> VersionDetailOut:
    """Labels, attribute heads, training config and the held-out evaluation training
    registered with it (confusion matrix, per-class scores, reliability bins and ECE; null
    without one). A version only in the model repository is imported into this replica's
    store first. 404 ``model_not_found`` when neither has it."""
    s = state(request)
    found = await db_call(
        s.backends,
        model_versions.version_detail,
        name,
        version,
        repo=repository(request),
        serving=serving(s.pool),
    )
    evaluation = found.pop("evaluation")
    try:
        checked = EvaluationFileOut.model_validate(evaluation) if evaluation else None
    except ValidationError as e:  # a file of another shape: the rest still answers
        log.warning("%s:%s: evaluation file not understood: %s", name, version, e)
        checked = None
    return VersionDetailOut.model_validate({**found, "evaluation": checked})
