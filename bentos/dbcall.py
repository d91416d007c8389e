"""Running a metadata query from a route: in a worker thread, the database down a 503."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from sqlalchemy.exc import SQLAlchemyError

from imageiq import errors
from imageiq.backends import Backends
from imageiq.db.engine import is_transient

T = TypeVar("T")


async def db_call(backends: Backends, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(engine, *args, **kwargs)`` in a worker thread; the database down is a 503."""

    def call() -> T:
        try:
            result = fn(backends.engine, *args, **kwargs)
        except SQLAlchemyError as e:
            if not is_transient(e):
                raise
            backends.database.failed(e)
            raise errors.DatabaseUnavailable(
                "The metadata database is unavailable; try again shortly.", retry_after=2
            ) from e
        backends.database.succeeded()
        return result

    return await anyio.to_thread.run_sync(call)
