"""Forget means forgotten, cluster-wide: two replicas on one PostgreSQL, Redis and S3. Replica
B holds records of an image (in memory, or spooled across a restart) while its database link
is cut; the image is deleted through replica A; when B's link is back, nothing of the image
comes back, and no image row names a missing object. A fresh upload of the same bytes after
the deletion is stored as usual.

Needs the tombstones wired into the writers (recorder and ``classify.store_now``): without
them B writes the image back."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from imageiq.db.schema import Image, Prediction
from imageiq.registry import RegisteredModel
from tests.backends import Stack, wait_for
from tests.conftest import Server, running_server

pytestmark = pytest.mark.slow


class CuttableLink:
    """A TCP forwarder to the database that the test cuts (open connections dropped, new
    ones closed at once) and mends: one replica loses its database, the other does not."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        self.open = False
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def link(stack: Stack) -> Iterator[CuttableLink]:
    running = CuttableLink(make_url(stack.postgres.url).port or 5432)
    yield running
    running.close()


@pytest.fixture
def replica_a(
    stack: Stack, digits_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("replica-a") / "server.log"
    with running_server(
        digits_model, log, {**stack.env(), "IMAGEIQ_MODELS": digits_model.tag}
    ) as a:
        yield a


def _env_b(
    stack: Stack, link: CuttableLink, digits_model: RegisteredModel, data: Path
) -> dict[str, str]:
    url = make_url(stack.postgres.url).set(port=link.port)
    return {
        **stack.env(),
        "IMAGEIQ_MODELS": digits_model.tag,
        "IMAGEIQ_DATABASE_URL": url.render_as_string(hide_password=False),
        "IMAGEIQ_DATA_DIR": str(data),  # its own spool
    }


def _pending(server: Server) -> int:
    return int(server.get("/v1/models").json()["dependencies"]["records_pending"])


def _image(digits_dir: Path, digit: int, n: int) -> bytes:
    return sorted((digits_dir / str(digit)).glob("*.png"))[n].read_bytes()


def _classify(server: Server, data: bytes, **fields: str) -> dict:
    resp = server.post("/v1/classify", files={"image": ("d.png", data)}, data=fields)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _nothing_of(stack: Stack, sha: str) -> None:
    assert stack.count(Image, Image.sha256 == sha) == 0
    assert stack.count(Prediction, Prediction.image_sha256 == sha) == 0
    assert not [k for k in stack.s3.object_keys() if k.endswith(sha)]


def _every_row_has_its_object(stack: Stack) -> None:
    keys = set(stack.s3.object_keys())
    with stack.session() as session:
        rows = session.execute(select(Image.sha256, Image.storage_key)).all()
    assert [sha for sha, key in rows if key not in keys] == []


def test_records_held_in_memory_by_another_replica_do_not_come_back(
    stack: Stack,
    link: CuttableLink,
    replica_a: Server,
    digits_model: RegisteredModel,
    digits_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = _image(digits_dir, 4, 3)
    env = _env_b(stack, link, digits_model, tmp_path_factory.mktemp("b-data"))
    log = tmp_path_factory.mktemp("replica-b") / "server.log"
    with running_server(digits_model, log, env) as b:
        _classify(b, _image(digits_dir, 0, 0))  # the key is checked once: then trusted
        wait_for(lambda: _pending(b) == 0, what="B idle")
        link.cut()
        sha = _classify(b, data, store="true")["image"]["id"]
        _classify(b, data)  # a prediction record too
        assert _pending(b) >= 2
        resp = replica_a.delete(f"/v1/admin/images/{sha}")
        # 200 when B's upload reached S3 before the deletion; 404 when nothing had.
        assert resp.status_code in (200, 404), resp.text
        link.mend()
        wait_for(lambda: _pending(b) == 0, 60, "B's held records written or dropped")
        _nothing_of(stack, sha)
        _every_row_has_its_object(stack)
        # A fresh upload of the same bytes, after the deletion, is an upload like any other.
        again = _classify(b, data, store="true")
        assert again["image"]["id"] == sha and again["image"]["stored"] is True
        assert stack.count(Image, Image.sha256 == sha) == 1
        _every_row_has_its_object(stack)
        assert replica_a.delete(f"/v1/admin/images/{sha}").status_code == 200


def test_records_spooled_by_another_replica_do_not_come_back(
    stack: Stack,
    link: CuttableLink,
    replica_a: Server,
    digits_model: RegisteredModel,
    digits_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    data = _image(digits_dir, 6, 2)
    env = _env_b(stack, link, digits_model, tmp_path_factory.mktemp("b-spool-data"))
    log = tmp_path_factory.mktemp("replica-b-1") / "server.log"
    with running_server(digits_model, log, env) as b:
        _classify(b, _image(digits_dir, 0, 1))
        wait_for(lambda: _pending(b) == 0, what="B idle")
        link.cut()
        sha = _classify(b, data, store="true")["image"]["id"]
        _classify(b, data)
        b.proc.send_signal(signal.SIGTERM)  # graceful: what it holds goes to the spool
        b.proc.wait(timeout=60)
    assert "spooled" in log.read_text()
    link.mend()
    assert replica_a.delete(f"/v1/admin/images/{sha}").status_code in (200, 404)
    log2 = tmp_path_factory.mktemp("replica-b-2") / "server.log"
    with running_server(digits_model, log2, env) as b:  # replays the spool at start
        wait_for(lambda: _pending(b) == 0, 60, "B's spool replayed")
        _nothing_of(stack, sha)
        _every_row_has_its_object(stack)
