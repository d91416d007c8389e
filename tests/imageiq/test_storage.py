"""Stored uploads: files in a temporary directory, and a real S3 API (a moto server that the
tests start, stop and restart) for the outage behaviour."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from imageiq.errors import ConfigurationError, ImageNotFound, StorageUnavailable
from imageiq.settings import Settings
from imageiq.storage import LocalStore, ObjectStore, S3Store, build_store
from tests.backends import MotoServer, free_port


def _png() -> bytes:
    """A real PNG without metadata: stored exactly as sent (nothing to remove)."""
    out = io.BytesIO()
    PILImage.new("RGB", (3, 2), (200, 10, 30)).save(out, format="PNG")
    return out.getvalue()


DATA = _png()
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()

# Names a client or a corrupted database row might hand us, none of which may reach the disk.
BAD_SHAS = [
    "../../etc/passwd",
    "%2e%2e",
    "%2e%2e%2f" * 8,
    "/etc/passwd",
    "",
    SHA.upper(),
    SHA[:-1],
    SHA + "0",
    SHA + "\n",
    "../" + SHA[3:],
    "..",
]


def _bad_keys(store: ObjectStore) -> list[str]:
    key = store.key_for(SHA)
    return [
        "../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        f"/{key}",
        f"../{key}",
        f"{SHA[:2]}/../{SHA}",
        f"{OTHER[:2]}/{SHA}",  # the wrong fan-out directory
        f"images/../{SHA}",
        f"other/{SHA}",
        f"{key}/",
        f"{key}\n",
        "",
        key.upper(),
        SHA if key != SHA else f"x{SHA}",
    ]


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    store = build_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    return store


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- LocalStore ------------------------------------------------------------------------------
def test_local_round_trip(local: LocalStore, tmp_path: Path) -> None:
    assert (local.backend, local.dependency.name, local.dependency.backend) == (
        "local",
        "storage",
        "local",
    )
    key = local.put(SHA, DATA, content_type="image/png")
    assert key == local.key_for(SHA) == f"{SHA[:2]}/{SHA}"
    assert (tmp_path / "images" / SHA[:2] / SHA).read_bytes() == DATA
    assert local.get(key) == DATA
    assert local.exists(key)
    local.delete(key)
    assert not local.exists(key)
    with pytest.raises(ImageNotFound):
        local.get(key)
    local.delete(key)  # idempotent
    assert local.dependency.up


def test_local_put_is_idempotent(local: LocalStore, tmp_path: Path) -> None:
    first = local.put(SHA, DATA, content_type="image/png")
    mtime = (tmp_path / "images" / first).stat().st_mtime_ns
    assert local.put(SHA, DATA, content_type="image/png") == first
    assert (tmp_path / "images" / first).stat().st_mtime_ns == mtime  # not rewritten
    assert _files(tmp_path / "images") == [first]


def test_hash_mismatch_is_refused(local: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not hash"):
        local.put(OTHER, DATA, content_type="image/png")
    assert not (tmp_path / "images").exists() or _files(tmp_path / "images") == []


@pytest.mark.parametrize("sha", BAD_SHAS)
def test_local_refuses_names_that_are_not_hashes(local: LocalStore, sha: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        local.key_for(sha)
    with pytest.raises(ValueError):
        local.put(sha, DATA, content_type="image/png")


def test_local_refuses_foreign_keys(local: LocalStore, tmp_path: Path) -> None:
    local.put(SHA, DATA, content_type="image/png")
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    bad = [*_bad_keys(local), str(outside), str(tmp_path / "images" / local.key_for(SHA))]
    for key in bad:
        for operation in (local.get, local.exists, local.delete):
            with pytest.raises(ValueError, match="not a key of this store"):
                operation(key)
    assert outside.read_bytes() == b"secret"
    assert local.get(local.key_for(SHA)) == DATA


def test_local_write_is_atomic(
    local: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local.put(OTHER, b"other", content_type="image/png")
    root = tmp_path / "images"
    # No temporary file is left beside a successful write ...
    assert _files(root) == [local.key_for(OTHER)]

    # ... nor beside a failed one, and no partial object appears under the real name.
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageUnavailable, match="No space left") as raised:
        local.put(SHA, DATA, content_type="image/png")
    assert raised.value.retry_after == local.dependency.cooldown_s
    assert _files(root) == [local.key_for(OTHER)]
    assert not local.dependency.up
    monkeypatch.undo()

    # During the cool-down storage is refused at once; afterwards it is probed again.
    with pytest.raises(StorageUnavailable, match="is down"):
        local.get(local.key_for(OTHER))
    local.dependency.cooldown_s = 0.0
    assert local.put(SHA, DATA, content_type="image/png") == local.key_for(SHA)
    assert local.dependency.up
    assert _files(root) == sorted([local.key_for(OTHER), local.key_for(SHA)])


def test_local_check(tmp_path: Path) -> None:
    store = build_store(Settings(data_dir=tmp_path / "new" / "dir"))
    store.check()
    assert (tmp_path / "new" / "dir" / "images").is_dir()
    assert _files(tmp_path / "new") == []  # the write probe is gone

    blocked = tmp_path / "file"
    blocked.write_text("in the way")
    with pytest.raises(ConfigurationError, match="writable directory"):
        build_store(Settings(data_dir=blocked)).check()


# --- S3Store (a real moto server) ------------------------------------------------------------
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials through boto3's usual chain, and none of the host's AWS config."""
    for name, value in MotoServer.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _s3(tmp_path: Path, *, bucket: str, url: str) -> S3Store:
    store = build_store(Settings(data_dir=tmp_path, s3_bucket=bucket, s3_endpoint_url=url))
    assert isinstance(store, S3Store)
    return store


def test_s3_round_trip(aws_env: None, moto: MotoServer, tmp_path: Path) -> None:
    store = _s3(tmp_path, bucket=moto.bucket, url=moto.url)
    assert (store.backend, store.dependency.name, store.dependency.backend) == (
        "s3",
        "storage",
        "s3",
    )
    store.check()
    key = store.put(SHA, DATA, content_type="image/png")
    assert key == store.key_for(SHA) == f"images/{SHA}"
    stored = moto.object_keys()
    assert key in stored
    head = moto.client().head_object(Bucket=moto.bucket, Key=key)
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"sha256": SHA, "content-sha256": SHA}  # nothing to remove
    assert store.get(key) == DATA
    assert store.exists(key)
    assert store.put(SHA, DATA, content_type="image/png") == key  # idempotent
    assert moto.object_keys().count(key) == 1
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ImageNotFound):
        store.get(key)
    store.delete(key)  # idempotent
    assert store.dependency.up
    assert not (tmp_path / "images").exists()  # nothing went to the local directory


def test_s3_refuses_bad_names_and_foreign_keys(
    aws_env: None, moto: MotoServer, tmp_path: Path
) -> None:
    store = _s3(tmp_path, bucket=moto.bucket, url=moto.url)
    with pytest.raises(ValueError, match="does not hash"):
        store.put(OTHER, DATA, content_type="image/png")
    for sha in BAD_SHAS:
        with pytest.raises(ValueError, match="SHA-256"):
            store.put(sha, DATA, content_type="image/png")
    for key in _bad_keys(store):
        for operation in (store.get, store.exists, store.delete):
            with pytest.raises(ValueError, match="not a key of this store"):
                operation(key)
    stored = moto.object_keys()
    assert not any(SHA in k or OTHER in k for k in stored)


def test_s3_check_missing_bucket(aws_env: None, moto: MotoServer, tmp_path: Path) -> None:
    store = _s3(tmp_path, bucket="no-such-bucket", url=moto.url)
    with pytest.raises(ConfigurationError, match="no-such-bucket"):
        store.check()


def test_s3_check_unreachable(aws_env: None, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = _s3(tmp_path, bucket="imageiq-test", url=url)
    start = time.monotonic()
    with pytest.raises(StorageUnavailable, match="imageiq-test"):
        store.check()
    assert time.monotonic() - start < 5
    assert not store.dependency.up


def test_s3_outage_and_recovery(aws_env: None, tmp_path: Path) -> None:
    server = MotoServer()
    server.start()
    try:
        store = _s3(tmp_path, bucket=server.bucket, url=server.url)
        store.put(OTHER, b"other", content_type="image/png")
        server.stop()

        # Down: refused within seconds (short timeouts, one retry), and reported down.
        start = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            store.put(SHA, DATA, content_type="image/png")
        assert time.monotonic() - start < 5
        message = raised.value.message
        assert server.bucket in message and server.url in message
        assert "testing" not in message  # the (fake) credentials never appear
        assert raised.value.retry_after is not None and raised.value.retry_after > 0
        assert raised.value.status == 503
        assert not store.dependency.up
        assert store.dependency.describe()["state"] == "down"

        # During the cool-down the next call fails at once instead of waiting for timeouts.
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match="is down"):
            store.put(SHA, DATA, content_type="image/png")
        assert time.monotonic() - start < 0.5

        # Back on the same address (an empty store, as after a restart).
        revived = MotoServer(bucket=server.bucket)
        revived.port = server.port
        server = revived
        server.start()
        time.sleep(store.dependency.cooldown_s)
        key = store.put(SHA, DATA, content_type="image/png")
        assert store.dependency.up
        assert store.dependency.describe()["state"] == "up"
        assert server.object_keys() == [key]
        assert store.get(key) == DATA
    finally:
        server.stop()
