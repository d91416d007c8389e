"""Text logs: one line per record, whatever a client puts in a path or a filename."""

from __future__ import annotations

import io
import logging

from imageiq.logs import OneLineFormatter


def test_control_characters_cannot_forge_a_log_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("imageiq.test-logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        forged = "/v1/x\nINFO imageiq.access GET /v1/admin 200 ok\r\x1b[2J\x00"
        logger.warning("GET %s 404 not_found", forged)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("a bug\nINFO forged")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    first, *rest = text.splitlines()
    assert first == (
        "WARNING imageiq.test-logs GET /v1/x\\x0aINFO imageiq.access GET /v1/admin 200 ok"
        "\\x0d\\x1b[2J\\x00 404 not_found"
    )
    # A traceback keeps its lines, but its message line is escaped like any other.
    assert rest[0] == "ERROR imageiq.test-logs a bug\\x0aINFO forged"
    assert rest[1].startswith("Traceback") and "ValueError: boom" in text
