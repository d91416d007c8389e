"""The metrics plane: Prometheus metrics for the scraper, kept apart from the public API.

BentoML serves ``/metrics`` on the API port, so whatever routes the API (an Ingress, a load
balancer) routes the metrics too. With ``IMAGEIQ_METRICS_PORT`` they move to a port of their
own, which the chart's Service names ``metrics`` and its Ingress never routes:

- :func:`serve_metrics`: prometheus_client's own HTTP server on that port, started once in
  the serving process (the service's deployment hook, before the workers) and stopped with
  it. It reads BentoML's multiprocess directory, so it serves what ``/metrics`` on the API
  port served: the series of every worker and of the model process.
- Without a metrics port, :class:`MetricsOnApiPort` answers ``GET /metrics`` on the API port
  from the same directory, as before. With one, ``/metrics`` there is an unknown path: 404
  in the error envelope (:class:`bentos.http.EnvelopeOutsideApi`).

BentoML's own metrics are off (``metrics: {enabled: false}`` in the service's config): its
HTTP middleware labelled every request with the raw URL path, so requests to made-up paths
grew ``/metrics`` without bound (2,000 of them made a scrape take 8 s), and its ``/metrics``
route would undo the separation. ImageIQ's request metrics (:mod:`imageiq.metrics`, counted
by :class:`bentos.http.RequestGuard`) label by route template and fold unknown paths into one
value, and the series here are theirs.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass
from threading import Thread
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("imageiq.planes")

METRICS_PATH = "/metrics"


def multiprocess_registry(directory: str | None = None) -> Any:
    """A registry that collects, on every scrape, the series all processes wrote to the
    prometheus_client multiprocess ``directory`` (default: ``PROMETHEUS_MULTIPROC_DIR``,
    which BentoML sets in its workers)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


@dataclass(frozen=True)
class MetricsServer:
    """The running metrics listener: its port, and :meth:`stop`."""

    port: int
    server: Any  # prometheus_client's ThreadingWSGIServer
    thread: Thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(*, port: int, directory: str, host: str = "0.0.0.0") -> MetricsServer:
    """Prometheus metrics of every process on ``host:port`` (all interfaces: the scraper
    comes from outside the pod), until this process exits."""
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            port, addr=host, registry=multiprocess_registry(directory)
        )
    except OSError as e:
        raise SystemExit(f"imageiq cannot start: cannot serve metrics on port {port}: {e}") from e
    running = MetricsServer(port=port, server=server, thread=thread)
    atexit.register(running.stop)
    log.info("serving Prometheus metrics on port %d (not on the API port)", port)
    return running


class MetricsOnApiPort:
    """Service-level ASGI middleware: ``GET /metrics`` on the API port, when no metrics port
    is set. The exposition is made in a worker thread: it reads every process's file."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.registry = multiprocess_registry()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != METRICS_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        from prometheus_client.exposition import choose_encoder

        accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
        encode, content_type = choose_encoder(accept)
        body = await anyio.to_thread.run_sync(encode, self.registry)
        await Response(body, headers={"Content-Type": content_type})(scope, receive, send)
