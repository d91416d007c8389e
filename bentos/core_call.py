"""The one call of the classification core that every classify route makes (``/v1``, the
v2 protocol, BentoML's own API endpoints): the model noted for the access log, a canary's
server errors counted against it, the batch sizes the images ran in noted."""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.types import Scope

from bentos.http import note
from bentos.state import ServiceState
from imageiq import errors
from imageiq.classify import ImageResult, Pixels
from imageiq.keys import Principal
from imageiq.pool import ServedModel


async def classify(
    scope: Scope,
    s: ServiceState,
    served: ServedModel,
    images: Sequence[bytes | Pixels],
    *,
    top_k: int,
    min_confidence: float = 0.0,
    store: bool = False,
    full: bool = False,
    principal: Principal,
    endpoint: str,
    started: float | None = None,
) -> list[ImageResult]:
    note(scope, model=served.tag)
    try:
        results = await s.core.classify(
            served,
            images,
            top_k=top_k,
            min_confidence=min_confidence,
            store=store,
            full=full,
            principal=principal,
            endpoint=endpoint,
            started=time.perf_counter() if started is None else started,
        )
    except Exception as e:
        # A canary is judged on its server errors too (not on capacity refusals or the
        # client's mistakes).
        status = e.status if isinstance(e, errors.ImageIQError) else 500
        if s.rollouts is not None and status >= 500 and status != 503:
            s.rollouts.note_error(served.tag)
        raise
    sizes = [r.classified.batch_size for r in results if r.classified and not r.classified.cached]
    if sizes:
        note(scope, batch_sizes=sizes)
    return results
