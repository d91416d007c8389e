"""When to try a call again, and after how long: shared by the sync and async clients.

What is retried:

- **429 and 503, every method.** The service answers them before doing the work (the rate
  limit is charged, the queue sheds, the model is still loading), so sending again cannot
  do a thing twice. It says when to come back in ``Retry-After``.
- **A connection that could not be made** (refused, DNS, connect timeout), every method:
  nothing was sent.
- **502, 504, a read timeout or a dropped connection, only for idempotent calls** (GET;
  the classify calls, whose only effect, storing an image, is keyed by its sha256). A job
  submission or a deletion may have happened; sending it again could submit twice.

How long: ``Retry-After`` when the answer has one (seconds or an HTTP date), else
exponential back-off with full jitter (``random() * min(cap, base * 2**attempt)``, the
AWS architecture blog's recommendation: clients that failed together do not come back
together). Never past the deadline: a retry that would start after it is not attempted,
the last error is raised at once instead of sleeping into a certain failure.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx

from imageiq.client.api_errors import ImageIQError

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_RETRY_STATUSES = frozenset({502, 504})
# Nothing reached the server: safe to send again whatever the method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds, or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` further attempts at most; ``deadline_s`` bounds a whole call, retries
    and waits included (None: only ``max_retries`` does); a ``Retry-After`` longer than
    ``max_wait_s`` is not waited for."""

    max_retries: int = 3
    deadline_s: float | None = None
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_wait_s: float = 60.0

    def deadline(self) -> float | None:
        """The monotonic time a call starting now must end by."""
        return None if self.deadline_s is None else time.monotonic() + self.deadline_s

    def backoff(self, attempt: int) -> float:
        return random.random() * min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)

    def wait_before_retry(
        self, error: ImageIQError, *, attempt: int, retryable: bool, deadline: float | None
    ) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1``, or None: raise ``error``."""
        if not retryable or attempt >= self.max_retries:
            return None
        wait = error.retry_after if error.retry_after is not None else self.backoff(attempt)
        if wait > self.max_wait_s:
            return None
        if deadline is not None and time.monotonic() + wait >= deadline:
            return None
        return wait


def status_retryable(status: int, *, idempotent: bool) -> bool:
    return status in RETRY_STATUSES or (idempotent and status in IDEMPOTENT_RETRY_STATUSES)


def transport_retryable(error: httpx.TransportError, *, idempotent: bool) -> bool:
    return isinstance(error, NOT_SENT) or idempotent


def attempt_timeout(timeout: httpx.Timeout, deadline: float | None) -> httpx.Timeout:
    """The configured timeouts, none longer than what is left before the deadline."""
    if deadline is None:
        return timeout
    left = max(0.001, deadline - time.monotonic())

    def cap(value: float | None) -> float:
        return left if value is None else min(value, left)

    return httpx.Timeout(
        connect=cap(timeout.connect),
        read=cap(timeout.read),
        write=cap(timeout.write),
        pool=cap(timeout.pool),
    )
