"""The classifier served on 127.0.0.1 for a load run or a benchmark: ``bentoml serve`` on a
free port, in a process group of its own, waited for until ``/readyz`` answers 200, and
stopped (SIGTERM, then SIGKILL) however the caller leaves. Used by run_load.py and bench.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serving(env: dict[str, str], log: Path, *, timeout: float = 300) -> Iterator[str]:
    """Yields the service's URL; its output goes to ``log``."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "bentoml", "serve", "bentos.service:ImageClassifier"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped below
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, log, timeout)
        yield url
    finally:
        stop(server)


def wait_ready(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    why = f"exited with {server.returncode}" if server.poll() is not None else "was not ready"
    tail = log.read_text(errors="replace")[-3000:]
    raise SystemExit(f"the service {why} in {timeout:.0f} s; the end of {log}:\n{tail}")


def stop(server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited in time."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
