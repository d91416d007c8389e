"""Real PostgreSQL, Redis and S3 (moto) servers for the tests, each on a free port on
127.0.0.1, started and stopped by the tests themselves (never someone else's process).

PostgreSQL is a throwaway cluster (``initdb`` into a temporary directory, run as the
``postgres`` user when the tests run as root), so a test may stop and restart it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within 30 s")


def _require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if found is None:
        pytest.fail(f"{binary} is not installed: the integration tests need it (apt: {package})")
    return found


class RedisServer:
    def __init__(self) -> None:
        self.binary = _require("redis-server", "redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, "redis-server", self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class MotoServer:
    """An S3-compatible server (moto) with one bucket."""

    def __init__(self, bucket: str = "imageiq-test") -> None:
        self.port = free_port()
        self.bucket = bucket
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    env: ClassVar[dict[str, str]] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def start(self, *, create_bucket: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, "moto server", self.proc)
        if create_bucket:
            self.client().create_bucket(Bucket=self.bucket)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def object_keys(self) -> list[str]:
        """Every key in the bucket (S3 lists 1,000 a page)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        pg_ctl = found[-1] if found else shutil.which("pg_ctl")
        if pg_ctl is None:
            pytest.fail(
                "PostgreSQL is not installed: the integration tests need it (apt: postgresql)"
            )
        self.bin = Path(pg_ctl).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="imageiq-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            pytest.fail(f"{tool} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = str(self.root / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        _wait_port(self.port, "postgres")
        deadline = time.monotonic() + 30
        while True:  # listening is not accepting: wait until a query works
            done = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail("postgres did not accept connections within 30 s")
            time.sleep(0.1)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Stack:
    """PostgreSQL, Redis and moto together, and the service settings that point at them."""

    def __init__(self) -> None:
        self.postgres, self.redis, self.s3 = PostgresServer(), RedisServer(), MotoServer()
        self._engine: Any = None

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()
        self.s3.start()

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        self.s3.stop()
        self.redis.stop()
        self.postgres.destroy()

    def env(self) -> dict[str, str]:
        return {
            "IMAGEIQ_DATABASE_URL": self.postgres.url,
            "IMAGEIQ_REDIS_URL": self.redis.url,
            "IMAGEIQ_S3_BUCKET": self.s3.bucket,
            "IMAGEIQ_S3_ENDPOINT_URL": self.s3.url,
            "IMAGEIQ_RECORD_FLUSH_INTERVAL_S": "0.05",
            "IMAGEIQ_AUTH_CACHE_TTL_S": "0.5",
            "IMAGEIQ_RATE_LIMIT_BURST": "5",  # for keys with a limit of their own
            "IMAGEIQ_PRECISION": "fp32",
            # Bulk jobs: webhooks to the tests' receivers on loopback, small chunks.
            "IMAGEIQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
            "IMAGEIQ_JOBS_CHUNK_SIZE": "50",
            "IMAGEIQ_JOBS_MAX_ARCHIVE_MEMBERS": "1000",
            **MotoServer.env,
        }

    def session(self) -> Session:
        if self._engine is None:
            from imageiq.db.engine import make_engine

            self._engine = make_engine(self.postgres.url)
        return Session(self._engine)

    def count(self, table: type, *where: object) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# Cool-down of the Redis links the unit tests make (the service uses 2 s).
REDIS_COOLDOWN_S = 0.5


@contextmanager
def migrated(url: str) -> Iterator[Any]:
    """An engine on ``url`` with the schema at the head migration; disposed after."""
    from imageiq.db.engine import make_engine, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
