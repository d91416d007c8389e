"""Admission by cost: the memory a worker lets requests hold at once.

Two budgets per worker process, both sized from the memory the process may use
(:func:`memory_limit`: the ``memory_limit_bytes`` setting, else the container's cgroup
limit, else the machine's memory; divided among the front workers):

- **request bytes** (:func:`byte_budget`): a request's body, counted before it is read (its
  Content-Length, or chunk by chunk as it streams) times what reading it costs
  (:data:`PARSE_FACTOR`: a JSON body of base64 images is held as bytes, as a str and as the
  decoded images);
- **decoded pixels** (:func:`pixel_budget`): an image's pixels, counted from its header
  before it is decoded and held until it is resized into the model's input.

A request or image that alone exceeds its budget is refused with 413; one that finds the
budget spent gets 503 ``overloaded`` with ``Retry-After`` (the pixel budget waits a bounded
while first: images of admitted requests queue for it like for the decode slots).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imageiq import errors
from imageiq.settings import Settings

# Shares of the worker's memory the two budgets may take; the rest is the model, the
# runtime and everything else.
BYTES_SHARE = 0.25
PIXELS_SHARE = 0.25
# Bytes one decoded pixel may cost between decode and the model's input: the decoded
# image (up to 8 bytes for 16-bit RGBA), its RGB conversion and the resize's buffers.
BYTES_PER_PIXEL = 16
# What holding a body of n bytes costs, by media type: JSON is read whole, parsed into a
# str and base64-decoded (the raw bytes are released last); multipart keeps each part and
# the bytes read from it; anything else is its bytes and a copy.
PARSE_FACTOR = {"json": 4, "multipart": 3, "other": 2, "archive": 0}
# Job archives (POST /v1/jobs) stream to a temporary file: they hold no memory.
ARCHIVE_MEDIA = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/x-tar",
        "application/gzip",
        "application/x-gzip",
        "application/x-gtar",
        "application/x-bzip2",
        "application/x-xz",
    }
)
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_limit(settings: Settings) -> int:
    """Bytes one worker process may use: the setting, or the container's limit (the
    machine's memory when it has none) shared by the front workers."""
    if settings.memory_limit_bytes is not None:
        return settings.memory_limit_bytes
    total = _physical_memory()
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))  # v1 says "no limit" with a huge number
        break
    workers = settings.front_workers if settings.model_process else 1
    return total // workers


def byte_budget(settings: Settings) -> int:
    if settings.max_in_flight_bytes is not None:
        return settings.max_in_flight_bytes
    return int(memory_limit(settings) * BYTES_SHARE)


def pixel_budget(settings: Settings) -> int:
    if settings.max_in_flight_pixels is not None:
        return settings.max_in_flight_pixels
    return int(memory_limit(settings) * PIXELS_SHARE) // BYTES_PER_PIXEL


def parse_factor(content_type: str | None) -> int:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return PARSE_FACTOR["json"]
    if media == "multipart/form-data":
        return PARSE_FACTOR["multipart"]
    if media in ARCHIVE_MEDIA:
        return PARSE_FACTOR["archive"]
    return PARSE_FACTOR["other"]


def _physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class Budget:
    """A quantity (bytes, pixels) that holders take from and give back; thread-safe.

    :meth:`take` answers at once; :meth:`hold` waits up to a deadline for room. The
    ``unit`` names what is counted, in the errors' messages and details."""

    def __init__(self, total: int, *, unit: str) -> None:
        if total < 1:
            raise ValueError("a budget needs a positive total")
        self.total, self.unit = total, unit
        self.used = 0
        self.peak = 0
        self._room = threading.Condition()

    def fits(self, amount: int) -> bool:
        """Whether ``amount`` could ever be taken (it is not over the whole budget)."""
        return amount <= self.total

    def take(self, amount: int) -> bool:
        """Takes ``amount`` if there is room now; False (nothing taken) if not."""
        with self._room:
            if self.used + amount > self.total:
                return False
            self._taken(amount)
            return True

    def give(self, amount: int) -> None:
        if amount <= 0:
            return
        with self._room:
            self.used = max(0, self.used - amount)
            self._room.notify_all()

    @contextmanager
    def hold(self, amount: int, *, wait_s: float) -> Iterator[None]:
        """Holds ``amount`` for the ``with`` block, waiting up to ``wait_s`` for room:
        413 if it is over the whole budget, 503 ``overloaded`` if no room came."""
        if not self.fits(amount):
            raise errors.ImageTooLarge(
                f"The image needs {amount} {self.unit}; this server holds at most "
                f"{self.total} at once.",
                details={f"max_{self.unit}": self.total},
            )
        deadline = time.monotonic() + wait_s
        with self._room:
            while self.used + amount > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._room.wait(left):
                    if self.used + amount <= self.total:
                        break
                    raise errors.Overloaded(
                        f"The server is decoding as many {self.unit} as it holds at once; "
                        "retry shortly.",
                        retry_after=1,
                    )
            self._taken(amount)
        try:
            yield
        finally:
            self.give(amount)

    def _taken(self, amount: int) -> None:
        self.used += amount
        self.peak = max(self.peak, self.used)
