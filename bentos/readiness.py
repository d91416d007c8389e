"""``GET /readyz`` with its reasons: the same status BentoML's probe gives (200 once every
model is loaded and warm, else 503), and a JSON body saying what each model and each
dependency is doing. A dependency that is down does not make the service unready: it
degrades (uncached, records held back), which the body shows, and the metrics too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from imageiq.backends import Backends
from imageiq.pool import ModelPool


class _Readiness:
    def __init__(self) -> None:
        self.pool: ModelPool | None = None
        self.backends: Backends | None = None
        self.is_ready: Callable[[], bool] | None = None

    def bind(self, pool: ModelPool, backends: Backends, is_ready: Callable[[], bool]) -> None:
        self.pool, self.backends, self.is_ready = pool, backends, is_ready

    def detail(self) -> tuple[bool, dict[str, Any]]:
        assert self.pool is not None and self.backends is not None and self.is_ready
        ready = self.is_ready()
        return ready, {
            "ready": ready,
            "models": {tag: m.state for tag, m in self.pool.models.items()},
            "unavailable": self.pool.errors,
            "dependencies": self.backends.describe(),
        }


readiness = _Readiness()


class ReadinessDetail:
    """Service-level ASGI middleware answering ``GET /readyz`` itself once bound."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("path") == "/readyz"
            and scope.get("method") in ("GET", "HEAD")
            and readiness.is_ready is not None
        ):
            ready, body = readiness.detail()
            await JSONResponse(body, status_code=200 if ready else 503)(scope, receive, send)
            return
        await self.app(scope, receive, send)
