"""The metrics plane (bentos/planes.py) on a real server: metrics on a port of their own, and
series whose labels stay bounded whatever paths clients make up.

One server for the module, as the GPU values run it (two front workers and a model process)
with IMAGEIQ_METRICS_PORT, so the metrics port is shown to carry every process's series.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imageiq.registry import RegisteredModel
from tests.conftest import Server, _free_port, running_server, stop_session
from tests.imageiq.images_helpers import encode, photo

pytestmark = pytest.mark.slow


class Planes:
    def __init__(self, server: Server, metrics_port: int) -> None:
        self.server = server
        self.metrics_port = metrics_port
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

    def scrape(self) -> str:
        r = httpx.get(self.metrics_url, timeout=30)
        assert r.status_code == 200, r.text
        return r.text


@pytest.fixture(scope="module")
def planes(
    digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Planes]:
    log = tmp_path_factory.mktemp("planes") / "server.log"
    port = _free_port()
    env = {
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_MODEL_PROCESS": "true",
        "IMAGEIQ_FRONT_WORKERS": "2",
        "IMAGEIQ_MODEL_SLOTS": "4",
        "IMAGEIQ_TORCH_THREADS": "1",
        "IMAGEIQ_CACHE_TTL_S": "0",
        "IMAGEIQ_METRICS_PORT": str(port),
    }
    with running_server(digits_model, log, env) as server:
        yield Planes(server, port)


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_on_their_own_port_not_the_api_port(planes: Planes) -> None:
    server = planes.server
    blob = encode(photo(seed=3), "JPEG", quality=92)
    r = server.post("/v1/classify", files={"image": ("x.jpg", blob)})
    assert r.status_code == 200, r.text
    # The API port: an unknown path, in the error envelope, whatever the method.
    for method in ("GET", "HEAD", "POST"):
        gone = server.request(method, "/metrics", auth=False)
        assert gone.status_code == 404, (method, gone.text)
        if method != "HEAD":
            assert gone.json()["error"]["code"] == "not_found"
            assert "imageiq_" not in gone.text
    # The metrics port: the fronts' requests (both workers write) and the model process's
    # batches, from the one multiprocess directory.
    text = planes.scrape()
    names = {name for name, _ in series(text)}
    assert {"imageiq_requests_total", "imageiq_requests_in_flight", "imageiq_model_ready"} <= names
    classified = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "imageiq_requests_total" and s.labels["endpoint"] == "/v1/classify"
    ]
    assert sum(s.value for s in classified) >= 1
    batches = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "imageiq_batch_size_count"
    ]
    assert sum(s.value for s in batches) >= 1  # written by the model process only
    # BentoML's path-labelled request series are off.
    assert not any(name.startswith("bentoml_") for name in names)
    # Prometheus asks for OpenMetrics; prometheus_client's server answers it.
    om = httpx.get(planes.metrics_url, headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")


def test_the_serving_process_owns_the_metrics_listener(planes: Planes) -> None:
    """One listener, in `bentoml serve` itself (started by the deployment hook), not in a
    worker or the model process that the supervisor restarts."""
    owners = []
    for pid in planes.server.worker_pids():
        try:
            process = psutil.Process(pid)
            # psutil 6 renamed connections(); kserve (a test dependency) holds psutil < 6.
            listing = getattr(process, "net_connections", None) or process.connections
            connections = listing(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == planes.metrics_port
            for c in connections
        ):
            owners.append(pid)
    assert owners == [planes.server.proc.pid]


def test_keys_without_a_pepper_are_warned_about_loudly(planes: Planes) -> None:
    """The fixture's server checks keys (auth on) with no IMAGEIQ_API_KEY_PEPPER: each worker
    says so three times at start."""
    assert planes.server.log.read_text().count("NO API-KEY PEPPER") >= 3


# Each request kind once to warm up (its first series appear), then in bulk: paths that
# match no route, and ids a route template matches, each with a token of its own.
Request = tuple[str, str, bool, str]  # method, path, send the key, the made-up token


def _made_up(i: int) -> Request:
    token = secrets.token_hex(32)
    kinds = [
        ("GET", f"/v1/images/{token}", True),  # a route template: 404 image_not_found
        ("GET", f"/v1/images/{token}/content", False),  # 401
        ("GET", f"/{token}", False),  # outside the API
        ("GET", f"/v1/{token}", True),
        ("POST", f"/v1/{token}/{i}", True),
        ("GET", f"/v1/models?tag={token}", True),
        ("GET", f"/v1/admin/models/{token}/activate", True),
    ]
    method, path, with_key = kinds[i % len(kinds)]
    return method, path, with_key, token


async def _send(server: Server, requests: list[Request]) -> list[int]:
    """The requests over keep-alive connections, 8 at a time; their statuses."""
    auth = {"Authorization": f"Bearer {server.key}"}
    limits = httpx.Limits(max_keepalive_connections=8)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(8)

        async def one(method: str, path: str, with_key: bool, _: str) -> int:
            async with gate:
                r = await client.request(method, path, headers=auth if with_key else {})
                return r.status_code

        return list(await asyncio.gather(*(one(*r) for r in requests)))


def test_made_up_paths_and_ids_do_not_grow_the_metrics(planes: Planes) -> None:
    warm_up = [_made_up(i) for i in range(7)]
    statuses = asyncio.run(_send(planes.server, warm_up))
    assert statuses[:6] == [404, 401, 404, 404, 404, 200], statuses
    assert statuses[6] in (404, 405), statuses  # a known route, another method
    before = planes.scrape()
    bulk = [_made_up(i) for i in range(3000)]
    statuses = asyncio.run(_send(planes.server, bulk))
    assert {200, 401, 404} <= set(statuses) <= {200, 401, 404, 405}
    started = time.perf_counter()
    after = planes.scrape()
    scrape_s = time.perf_counter() - started
    # The same series as after the warm-up: only their values moved (a few digits each).
    assert series(after) == series(before)
    assert len(after) - len(before) < 2_000, (len(before), len(after))
    assert scrape_s < 1.0
    # No label value carries a token a client made up; endpoints are route templates.
    tokens = {token for *_, token in warm_up + bulk}
    values = {value for _, labels in series(after) for _, value in labels}
    assert not {v for v in values for token in tokens if token in v}
    endpoints = {
        dict(labels)["endpoint"] for _, labels in series(after) if "endpoint" in dict(labels)
    }
    assert "/v1/images/{image_id}" in endpoints
    # Every unknown /v1 path, folded into one value.
    assert endpoints & {"/v1/{path:path}", "other"}, endpoints
    assert len(endpoints) <= 8, endpoints


def test_the_metrics_listener_stops_with_the_server(planes: Planes) -> None:
    """Last in the module: SIGTERM ends `bentoml serve`, and its metrics port with it."""
    stop_session(planes.server.proc, timeout=60)
    with pytest.raises(httpx.ConnectError):
        httpx.get(planes.metrics_url, timeout=5)
