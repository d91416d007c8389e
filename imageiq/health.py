"""The state of the external dependencies (database, Redis, object storage).

Each :class:`Dependency` is up or down. A failure is logged once, when the state changes
(not once per request), shown in ``imageiq_dependency_up`` and in ``/readyz``'s detail, and
starts a short cool-down during which callers skip the dependency instead of waiting for
its timeout on every request; after it, the next call probes it again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from imageiq.metrics import metrics

log = logging.getLogger("imageiq.health")


class Dependency:
    def __init__(self, name: str, *, backend: str, cooldown_s: float = 2.0) -> None:
        self.name, self.backend, self.cooldown_s = name, backend, cooldown_s
        self._lock = threading.Lock()
        self._up = True
        self._since = time.time()
        self._failed_at = 0.0
        self._error: str | None = None
        self._gauge = metrics().dependency_up.labels(name, backend)
        self._gauge.set(1)

    @property
    def up(self) -> bool:
        return self._up

    def available(self) -> bool:
        """Up, or down long enough that the next call should probe it again."""
        return self._up or time.monotonic() - self._failed_at >= self.cooldown_s

    def succeeded(self) -> None:
        if self._up:
            return
        with self._lock:
            if self._up:
                return
            self._up, self._since, self._error = True, time.time(), None
        self._gauge.set(1)
        log.warning("%s (%s) is back", self.name, self.backend)

    def failed(self, error: BaseException) -> None:
        with self._lock:
            self._failed_at = time.monotonic()
            changed = self._up
            self._up, self._error = False, f"{type(error).__name__}: {error}"[:300]
            if changed:
                self._since = time.time()
        if changed:
            self._gauge.set(0)
            log.error(
                "%s (%s) is down, carrying on without it: %s", self.name, self.backend, self._error
            )

    def describe(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "backend": self.backend,
            "state": "up" if self._up else "down",
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since)),
        }
        if self._error is not None:  # the kind only: the message (hosts, users) is logged
            state["error"] = self._error.split(":", 1)[0]
        return state
