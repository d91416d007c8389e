"""The classifier served on 127.0.0.1 for a load run or a benchmark: ``bentoml serve`` on a
free port, in a process group of its own, waited for until ``/readyz`` answers 200, and
stopped (SIGTERM, then SIGKILL) however the caller leaves; and the CPU time its process tree
has used. Used by run_load.py and bench.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LocalServer:
    url: str
    pid: int  # the `bentoml serve` process: its workers are its descendants

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's process tree so far (its live processes:
        ``bentoml serve`` and the workers it started, whose own sessions hide them from a
        process-group look-up)."""
        return tree_cpu_seconds(self.pid)


SERVICE = "bentos.service:ImageClassifier"


@contextmanager
def serving(
    env: dict[str, str],
    log: Path,
    *,
    service: str = SERVICE,
    working_dir: Path = ROOT,
    timeout: float = 300,
) -> Iterator[LocalServer]:
    """Yields the running service; its output goes to ``log``. ``service`` is an import
    path found from ``working_dir`` (the benchmark serves load-tests/frontend_service.py)."""
    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "bentoml", "serve", service),
                *("--working-dir", str(working_dir)),
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
        yield LocalServer(url, server.pid)
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


def process_tree(root: int) -> dict[int, list[str]]:
    """``root`` and its live descendants (found by parent, so also the processes that started
    sessions of their own, as BentoML's workers do): pid -> the fields of /proc/PID/stat
    after the command name."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the command name, which may hold spaces and parentheses.
            stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process just exited
            continue
    tree = {}
    for pid, fields in stats.items():
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = int(stats[ancestor][1]) if ancestor in stats else 0
        if ancestor == root:
            tree[pid] = fields
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants, from /proc."""
    ticks = sum(int(f[11]) + int(f[12]) for f in process_tree(root).values())  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")
