"""Log set-up for the service: one JSON object per line, with the request id.

Every ``imageiq.*`` record carries ``request_id`` (from the request being served, "-"
outside one), so a client's ``X-Request-ID`` finds every line about its request. The access
log (``imageiq.access``) adds method, path, status, error code, model, latency and batch
sizes. Image bytes are never logged: records carry sizes and hashes only.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

# The server's own id of the request being served (never the client's: a client could
# reuse or forge one), and the X-Request-ID the client sent, if any, kept apart.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
client_request_id_var: ContextVar[str | None] = ContextVar("client_request_id", default=None)


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


# C0 controls and DEL, which a client can put in a path (%0a) to forge a log line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class OneLineFormatter(logging.Formatter):
    """Text records of one line each: control characters in the message (from a path, a
    filename, a header) are written escaped (``\\x0a``), so no client text can start a
    line that looks like a record of its own. A traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_CONTROLS)


def configure_logging(fmt: Literal["json", "text"], *, level: int = logging.INFO) -> None:
    """Send ``imageiq.*`` records to stderr in ``fmt``; BentoML's own loggers are untouched."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}{request_id}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            OneLineFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    logger = logging.getLogger("imageiq")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
