"""Fault tests: Redis stopped, S3 unavailable, PostgreSQL restarted, the service stopped
while the database is down. Classification keeps answering 200 throughout, and afterwards
every accepted prediction is in PostgreSQL: counted, not sampled."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from imageiq.db.schema import Image, Prediction
from imageiq.registry import RegisteredModel
from tests.backends import Stack, wait_for
from tests.conftest import Server, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = Stack()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def images(digits_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(digits_dir.glob("*/*.png"))]


@pytest.fixture(scope="module")
def env(
    stack: Stack, digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    data = tmp_path_factory.mktemp("faults-data")
    return {**stack.env(), "IMAGEIQ_MODELS": digits_model.tag, "IMAGEIQ_DATA_DIR": str(data)}


@pytest.fixture(scope="module")
def served(
    env: dict[str, str], digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("faults") / "server.log"
    with running_server(digits_model, log, env) as server:
        yield server


class Client:
    """Sends classify requests and counts the accepted ones (each is one prediction)."""

    def __init__(self, server: Server, images: list[bytes]) -> None:
        self.server, self.images = server, images
        self.next = 0
        self.accepted = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def classify(self, *, store: bool = False, fresh: bool = True) -> dict:
        with self.lock:
            i = self.next if fresh else 0
            self.next += 1 if fresh else 0
        data = self.images[i % len(self.images)]
        fields = {"store": "true"} if store else {}
        resp = self.server.post("/v1/classify", files={"image": ("d.png", data)}, data=fields)
        with self.lock:
            if resp.status_code == 200:
                self.accepted += 1
            else:
                self.failures.append(f"{resp.status_code} {resp.text[:200]}")
        return resp.json() if resp.status_code == 200 else {}

    def run_for(self, seconds: float, threads: int = 3, **options: bool) -> None:
        deadline = time.monotonic() + seconds

        def loop() -> None:
            while time.monotonic() < deadline:
                self.classify(**options)

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def dependency(server: Server, name: str) -> str:
    return str(server.get("/v1/models").json()["dependencies"][name]["state"])


def test_redis_stopped_mid_run(served: Server, stack: Stack, images: list[bytes]) -> None:
    client = Client(served, images)
    before = stack.count(Prediction)
    client.run_for(1.0)
    stack.redis.stop()
    client.run_for(3.0)
    assert served.get("/readyz", auth=False).status_code == 200
    assert dependency(served, "redis") == "down"
    metrics = served.get("/metrics", auth=False).text
    assert 'imageiq_dependency_up{backend="redis",dependency="redis"} 0.0' in metrics
    repeated = client.classify(fresh=False)
    assert client.classify(fresh=False)["cached"] is False  # no cache while Redis is down
    stack.redis.start()
    time.sleep(2.5)  # the cool-down, then a request probes Redis again
    client.classify(fresh=False)
    wait_for(lambda: dependency(served, "redis") == "up", what="redis back")
    assert client.classify(fresh=False)["cached"] is True
    assert client.failures == [] and repeated
    wait_for(lambda: stack.count(Prediction) == before + client.accepted, what="every prediction")
    assert served.log.read_text().count("redis (redis) is down") == 1  # logged once
    print(
        f"redis outage: {client.accepted} accepted, {stack.count(Prediction) - before} in postgres"
    )


def test_s3_unavailable(served: Server, stack: Stack, images: list[bytes]) -> None:
    client = Client(served, images)
    client.next = 500
    stack.s3.stop()
    answers = [client.classify(store=True) for _ in range(8)]
    assert client.failures == []
    assert [a["image"]["stored"] for a in answers] == [False] * 8
    assert dependency(served, "storage") == "down"
    shas = {a["image"]["id"] for a in answers}
    assert stack.count(Image, Image.sha256.in_(shas)) == 0  # no row without its object
    stack.s3.start()  # a fresh moto: the bucket is empty again
    wait_for(lambda: stack.count(Image, Image.sha256.in_(shas)) == len(shas), 30, "rows")
    assert {f"images/{sha}" for sha in shas} <= set(stack.s3.object_keys())
    assert dependency(served, "storage") == "up"
    print(f"s3 outage: {len(shas)} images answered stored=false, all {len(shas)} stored after")


def test_postgres_restarted_mid_run(served: Server, stack: Stack, images: list[bytes]) -> None:
    client = Client(served, images)
    client.next = 900
    before = stack.count(Prediction)
    stored: list[str] = []
    restart = threading.Thread(target=lambda: (time.sleep(1.0), stack.postgres.stop()))
    restart.start()
    client.run_for(3.0)
    restart.join()
    stored = [client.classify(store=True)["image"]["id"] for _ in range(5)]
    assert dependency(served, "database") == "down"
    assert served.get("/readyz", auth=False).status_code == 200
    pending = served.get("/v1/models").json()["dependencies"]["records_pending"]
    assert pending > 0
    client.run_for(1.0)
    stack.postgres.start()
    assert client.failures == []
    wait_for(lambda: stack.count(Prediction) == before + client.accepted, 30, "every prediction")
    # The images accepted while it was down were spooled before their answer: replayed too.
    wait_for(lambda: stack.count(Image, Image.sha256.in_(stored)) == len(set(stored)), 30)
    with stack.session() as session:
        found = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(stored))))
    assert found == set(stored)
    wait_for(lambda: dependency(served, "database") == "up", what="database up")
    print(
        f"postgres restart: {client.accepted} accepted ({pending} pending at the worst), "
        f"{stack.count(Prediction) - before} in postgres, {len(found)}/{len(stored)} stored images"
    )


def test_records_survive_a_shutdown_while_postgres_is_down(
    env: dict[str, str],
    stack: Stack,
    images: list[bytes],
    digits_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # A data directory (and so a spool) of its own: not the running `served` replica's.
    env = {**env, "IMAGEIQ_DATA_DIR": str(tmp_path_factory.mktemp("shutdown-data"))}
    log = tmp_path_factory.mktemp("shutdown") / "server.log"
    with running_server(digits_model, log, env) as server:
        client = Client(server, images)
        client.classify()  # the key is checked once: from then on this replica trusts it
        wait_for(lambda: server.get("/v1/models").json()["dependencies"]["records_pending"] == 0)
        before = stack.count(Prediction)
        client.accepted = 0
        stack.postgres.stop()
        client.run_for(1.5)
        assert client.failures == [] and client.accepted > 0
        server.proc.send_signal(signal.SIGTERM)  # graceful: the buffer goes to the spool
        server.proc.wait(timeout=60)
    stack.postgres.start()
    assert stack.count(Prediction) == before
    log2 = tmp_path_factory.mktemp("restart") / "server.log"
    with running_server(digits_model, log2, env):  # replays the spool at start
        wait_for(
            lambda: stack.count(Prediction) == before + client.accepted, 30, "replayed records"
        )
    assert "spooled" in log.read_text()
    print(f"shutdown while down: {client.accepted} accepted, all replayed at the next start")


def test_a_pod_replaced_mid_outage_loses_nothing_it_accepted(
    env: dict[str, str],
    stack: Stack,
    images: list[bytes],
    digits_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """PostgreSQL and S3 down; pod A accepts stored images and predictions, then is replaced
    (SIGTERM, as on a rollout or a drain) mid-outage; pod B, a new instance on the same data
    volume, adopts A's spool; once both are back, everything either accepted is there."""
    shared = tmp_path_factory.mktemp("replaced-data")  # the release's data claim
    env = {**env, "IMAGEIQ_DATA_DIR": str(shared)}
    accepted: list[str] = []
    log_a = tmp_path_factory.mktemp("pod-a") / "server.log"
    with running_server(digits_model, log_a, env) as a:
        client = Client(a, images)
        client.next = 1300
        client.classify()  # its key checked once: trusted through the outage
        wait_for(lambda: a.get("/v1/models").json()["dependencies"]["records_pending"] == 0)
        before_predictions = stack.count(Prediction)
        client.accepted = 0
        stack.postgres.stop()
        stack.s3.stop()
        for _ in range(6):
            answer = client.classify(store=True)
            assert answer["image"]["stored"] is False  # accepted: "will be stored"
            accepted.append(answer["image"]["id"])
        client.run_for(1.0)  # predictions only
        assert client.failures == []
        a_accepted = client.accepted
        a.proc.send_signal(signal.SIGTERM)
        a.proc.wait(timeout=60)
    stack.postgres.start()  # B needs its database to start; S3 stays down
    log_b = tmp_path_factory.mktemp("pod-b") / "server.log"
    with running_server(digits_model, log_b, env) as b:
        client = Client(b, images)
        client.next = 1500
        for _ in range(3):
            answer = client.classify(store=True)
            assert answer["image"]["stored"] is False
            accepted.append(answer["image"]["id"])
        assert client.failures == []
        b_accepted = client.accepted
        stack.s3.start()
        shas = set(accepted)
        wait_for(
            lambda: stack.count(Image, Image.sha256.in_(shas)) == len(shas),
            60,
            "every accepted image's row",
        )
        wait_for(
            lambda: stack.count(Prediction) == before_predictions + a_accepted + b_accepted,
            60,
            "every accepted prediction",
        )
    assert {f"images/{sha}" for sha in shas} <= set(stack.s3.object_keys())
    assert not [p for p in shared.glob("spool/*/*.jsonl") if p.parent.name != "rejected"]
    print(
        f"pod replaced mid-outage: {len(shas)} stored images and "
        f"{a_accepted + b_accepted} predictions accepted ({a_accepted} by the replaced pod), "
        f"{stack.count(Image, Image.sha256.in_(shas))} images and "
        f"{stack.count(Prediction) - before_predictions} predictions arrived"
    )


def test_a_revoked_key_stops_within_the_ttl_and_grace_while_the_database_is_down(
    env: dict[str, str],
    stack: Stack,
    images: list[bytes],
    digits_model: RegisteredModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Revoked on one side (the CLI's revoke, in the database), then the database goes down:
    this replica, which had the key cached, lets it classify only for the grace past its TTL
    and refuses the label and admin scopes as soon as the TTL has passed (fail closed)."""
    from imageiq.db.engine import make_engine
    from imageiq.keys import create_key, revoke_key

    ttl, grace = 1.0, 4.0
    env = {
        **env,
        "IMAGEIQ_DATA_DIR": str(tmp_path_factory.mktemp("revoke-data")),
        "IMAGEIQ_AUTH_CACHE_TTL_S": str(ttl),
        "IMAGEIQ_AUTH_STALE_GRACE_S": str(grace),
    }
    engine = make_engine(stack.postgres.url)
    try:
        classify_key, row = create_key(engine, name="revoked", scopes=["classify"], pepper=b"")
        admin_key, _ = create_key(engine, name="admin", scopes=["admin"], pepper=b"")
    finally:
        engine.dispose()
    image = {"image": ("d.png", images[0])}

    def as_(key: str, method: str, path: str, **kw: Any) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        return int(server.request(method, path, headers=headers, **kw).status_code)

    log = tmp_path_factory.mktemp("revoke") / "server.log"
    with running_server(digits_model, log, env) as server:
        assert as_(classify_key, "POST", "/v1/classify", files=image) == 200
        assert as_(admin_key, "GET", "/v1/models") == 200
        engine = make_engine(stack.postgres.url)
        try:
            revoke_key(engine, row.id, actor="test")
        finally:
            engine.dispose()
        stack.postgres.stop()
        try:
            time.sleep(ttl + 0.5)
            # Past the TTL: the admin key's admin rights fail closed...
            assert (
                as_(admin_key, "POST", "/v1/admin/models/x/activate", json={"version": "v"}) == 503
            )
            # ...while the revoked classify key, which this replica cannot know is revoked,
            # classifies for the grace (the documented trade-off), and not a moment more.
            assert as_(classify_key, "POST", "/v1/classify", files=image) == 200
            time.sleep(grace)
            status = as_(classify_key, "POST", "/v1/classify", files=image)
            assert status == 503, status
        finally:
            stack.postgres.start()
        wait_for(lambda: as_(classify_key, "POST", "/v1/classify", files=image) == 401, 30)
        assert as_(admin_key, "GET", "/v1/models") == 200
    print(
        f"revocation while the database was down: refused {ttl + grace:g} s after the last "
        f"check (TTL {ttl:g} s + grace {grace:g} s); admin refused after the TTL"
    )
