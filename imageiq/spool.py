"""The spool: records waiting for the database or the object store, on disk, per instance.

Layout under ``root`` (``data_dir/spool``, a PersistentVolumeClaim in the chart)::

    root/<instance>/<time_ns>-<random>.jsonl   one batch of records, oldest name first
    root/<instance>/.alive                     touched while the instance runs
    root/rejected/                             records the database refused, for an operator

Each service process writes only its own directory (``<instance>``: the host or pod name
and the process id). A directory marked ``.released`` (its instance shut down) or whose
``.alive`` has not been touched for ``orphan_after_s`` (it was killed) belongs to an
instance that is gone (a replaced pod, a restarted worker): the next instance to look (at
its start, then every half minute) adopts its files, one atomic rename each, so two
adopters never take the same file and nothing an instance left behind is lost. Files
written by releases before the per-instance layout (``root/*.jsonl``) are adopted the
same way.

The files are kept in a deque in name order, so taking the oldest is O(1) and a replay of n
records is O(n); only :meth:`forget` reads every file (an image's deletion, which is rare).
Every method does disk I/O: callers run them off the event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import deque
from pathlib import Path

from imageiq.records import Record, read_spool, write_spool

log = logging.getLogger("imageiq.spool")

ALIVE = ".alive"
RELEASED = ".released"
REJECTED = "rejected"


def instance_name() -> str:
    """This process's directory name: the pod (host) name and the process id."""
    host = os.environ.get("HOSTNAME") or socket.gethostname() or "host"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host)[:100]
    return f"{safe}-{os.getpid()}"


class Spool:
    def __init__(self, root: Path, *, instance: str, orphan_after_s: float = 60.0) -> None:
        self.root = root
        self.dir = root / instance
        self.rejected = root / REJECTED
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rejected.mkdir(parents=True, exist_ok=True)
        self.orphan_after_s = orphan_after_s
        self.heartbeat()
        self._files: deque[Path] = deque()
        self._sizes: dict[Path, tuple[int, int]] = {}  # file -> (records, bytes)
        self.records = 0
        self.bytes = 0
        for path in sorted(self.dir.glob("*.jsonl")):
            self._track(path)
        self.adopt_orphans(include_legacy=True)

    # --- writing ----------------------------------------------------------------------------
    def append(self, records: list[Record]) -> None:
        """Write ``records`` as one new file (fsynced) at the end of the queue."""
        if not records:
            return
        path = self.dir / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        write_spool(path, records)
        self._track(path, count=len(records))

    def pop_oldest(self) -> list[Record]:
        """The oldest file's records, its file removed; [] when the spool is empty. A file
        that cannot be read is moved to ``rejected/`` for an operator."""
        while self._files:
            path = self._files.popleft()
            count, size = self._sizes.pop(path, (0, 0))
            self.records -= count
            self.bytes -= size
            try:
                records = read_spool(path)
            except FileNotFoundError:
                continue
            except (ValueError, TypeError, KeyError, OSError) as e:  # not ours, or damaged
                log.error("spool file %s cannot be read (%s): moved to %s", path, e, self.rejected)
                path.replace(self.rejected / path.name)
                continue
            path.unlink()
            return records
        return []

    def forget(self, sha256: str) -> int:
        """Drop every record of an image from this instance's files; returns how many."""
        dropped = 0
        for path in list(self._files):
            records = read_spool(path)
            kept = [r for r in records if r.sha256 != sha256]
            if len(kept) == len(records):
                continue
            dropped += len(records) - len(kept)
            write_spool(path, kept)
            count, size = self._sizes.pop(path)
            self.records -= count
            self.bytes -= size
            if kept:
                self._sizes[path] = (len(kept), path.stat().st_size)
                self.records += len(kept)
                self.bytes += self._sizes[path][1]
            else:
                self._files.remove(path)
        return dropped

    def reject(self, records: list[Record]) -> Path:
        path = self.rejected / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        write_spool(path, records)
        return path

    # --- instances --------------------------------------------------------------------------
    def heartbeat(self) -> None:
        (self.dir / ALIVE).touch()

    def release(self) -> None:
        """This instance stops: its files may be adopted at once (the next start's)."""
        (self.dir / RELEASED).touch()

    def adopt_orphans(self, *, include_legacy: bool = False) -> int:
        """Move the files of instances gone for ``orphan_after_s`` into this one's; returns
        how many records were adopted."""
        adopted = 0
        now = time.time()
        candidates: list[Path] = []
        if include_legacy:
            candidates.extend(sorted(self.root.glob("*.jsonl")))
        for other in self.root.iterdir():
            if other == self.dir or other.name == REJECTED or not other.is_dir():
                continue
            if not _gone(other, now, self.orphan_after_s):
                continue
            candidates.extend(sorted(other.glob("*.jsonl")))
        for path in candidates:
            target = self.dir / path.name
            try:
                path.rename(target)  # atomic: of two adopters, one wins, the other skips
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("cannot adopt spool file %s: %s", path, e)
                continue
            adopted += self._track(target)
        if adopted:
            self._files = deque(sorted(self._files, key=lambda p: p.name))
        for other in self.root.iterdir():  # empty directories of gone instances
            if other != self.dir and other.is_dir() and other.name != REJECTED:
                try:
                    if _gone(other, now, self.orphan_after_s) and not any(
                        p.suffix == ".jsonl" for p in other.iterdir()
                    ):
                        for marker in (ALIVE, RELEASED):
                            (other / marker).unlink(missing_ok=True)
                        other.rmdir()
                except OSError:
                    continue
        if adopted:
            log.info("adopted %d spooled records of instances that are gone", adopted)
        return adopted

    # --- bookkeeping ------------------------------------------------------------------------
    def _track(self, path: Path, *, count: int | None = None) -> int:
        if count is None:
            with path.open("rb") as f:
                count = sum(1 for line in f if line.strip())
        size = path.stat().st_size
        self._sizes[path] = (count, size)
        self._files.append(path)
        self.records += count
        self.bytes += size
        return count


def _gone(directory: Path, now: float, after_s: float) -> bool:
    """Whether an instance's directory is no longer looked after: released, or neither it
    nor its heartbeat touched for ``after_s`` (a new one counts from its creation)."""
    if (directory / RELEASED).exists():
        return True
    for path in (directory / ALIVE, directory):  # the directory: before its first heartbeat
        try:
            return now - path.stat().st_mtime >= after_s
        except FileNotFoundError:
            continue
    return True
