"""Uploaded archives (zip; tar, plain or gzip/bzip2/xz-compressed), read without trusting them.

An archive is read from a file on disk (the upload streamed there), never whole into memory,
and every member is bounded before its bytes are kept: the member count, each member's size
(the image limit; a header that lies is caught by reading one byte past it), the bytes once
expanded (zip and gzip bombs), the names (no absolute paths, drive letters, backslashes,
``..`` or control characters; at most :data:`MAX_DEPTH` folders deep), links and devices
(refused), encrypted members (refused) and archives inside the archive (refused: nesting is
not expanded). :func:`check_archive` walks it once to find any breach, so a bad archive is
refused before anything of it is stored; :func:`iter_members` then yields its images.

Folders, macOS resource forks (``__MACOSX/``) and hidden files (``.DS_Store``) are skipped;
any other member is an item of the job (a file that is not an image then gets its own
``unsupported_image_format`` error, like a bad upload).
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imageiq.errors import InvalidArchive

MAX_DEPTH = 16
MAX_NAME_BYTES = 1024
NESTED_SUFFIXES: tuple[str, ...] = (".zip", ".tar", ".tgz", ".tbz2", ".txz", ".gz", ".bz2", ".xz")
NESTED_SUFFIXES += (".7z", ".rar", ".zst")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Limits:
    members: int  # entries of any kind, folders included
    member_bytes: int  # one file, expanded
    expanded_bytes: int  # all files, expanded


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes


def kind_of(head: bytes) -> str:
    """``zip`` or ``tar`` from the first bytes; tar is also what is left to try."""
    return "zip" if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") else "tar"


def check_archive(path: Path, limits: Limits) -> int:
    """The number of items (files kept) in the archive; :class:`InvalidArchive` at the first
    breach of a bound. Reads every member's bytes once, bounded."""
    return sum(1 for _ in iter_members(path, limits))


def iter_members(path: Path, limits: Limits) -> Iterator[Member]:
    """The archive's files in archive order, each checked as the module says."""
    with path.open("rb") as f:
        head = f.read(4)
    if kind_of(head) == "zip":
        yield from _zip_members(path, limits)
    else:
        yield from _tar_members(path, limits)


class _Tally:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.entries = 0
        self.expanded = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.members:
            raise InvalidArchive(
                f"The archive has more than {self.limits.members} members.",
                details={"reason": "too_many_members", "max_members": self.limits.members},
            )

    def read(self, name: str, declared: int, stream: IO[bytes]) -> bytes:
        limit = self.limits.member_bytes
        if declared > limit:
            raise _too_big(name, limit)
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise _too_big(name, limit)
        self.expanded += len(data)
        if self.expanded > self.limits.expanded_bytes:
            raise InvalidArchive(
                f"The archive expands to more than {self.limits.expanded_bytes} bytes.",
                details={"reason": "too_large_expanded", "max_bytes": self.limits.expanded_bytes},
            )
        return data


def _too_big(name: str, limit: int) -> InvalidArchive:
    return InvalidArchive(
        f"Member {name[:200]!r} is larger than {limit} bytes, the most an image may be.",
        details={"reason": "member_too_large", "member": name[:200], "max_bytes": limit},
    )


def checked_name(name: str) -> str | None:
    """The member's name if it is to be kept, None for one to skip (a folder, a resource
    fork, a hidden file); :class:`InvalidArchive` for a name no archive should carry."""

    def refuse(why: str) -> InvalidArchive:
        return InvalidArchive(
            f"Member name {name[:200]!r} is refused: {why}.",
            details={"reason": "bad_member_name", "member": name[:200]},
        )

    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise refuse(f"longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise refuse("it holds control characters")
    if "\\" in name:
        raise refuse("it holds a backslash")
    if name.startswith("/") or _DRIVE.match(name):
        raise refuse("it is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("it climbs out of the archive ('..')")
    if len(parts) > MAX_DEPTH + 1:
        raise refuse(f"it is more than {MAX_DEPTH} folders deep")
    if not parts or name.endswith("/"):
        return None
    if parts[0] == "__MACOSX" or parts[-1].startswith("."):
        return None
    if parts[-1].lower().endswith(NESTED_SUFFIXES):
        raise InvalidArchive(
            f"Member {name[:200]!r} is an archive: archives inside the archive are not "
            "expanded; send its images in the outer archive.",
            details={"reason": "nested_archive", "member": name[:200]},
        )
    return "/".join(parts)


def _zip_members(path: Path, limits: Limits) -> Iterator[Member]:
    tally = _Tally(limits)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InvalidArchive(
            f"Not a readable zip archive: {e}.", details={"reason": "unreadable"}
        ) from e
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.members:
            tally.entries = len(infos) - 1
            tally.entry()
        for info in infos:
            tally.entry()
            name = checked_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidArchive(
                    f"Member {info.filename[:200]!r} is a symbolic link.",
                    details={"reason": "link", "member": info.filename[:200]},
                )
            if name is None or info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise InvalidArchive(
                    f"Member {name[:200]!r} is encrypted.",
                    details={"reason": "encrypted", "member": name[:200]},
                )
            try:
                with archive.open(info) as stream:
                    data = tally.read(name, info.file_size, stream)
            except InvalidArchive:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
                raise InvalidArchive(
                    f"Member {name[:200]!r} cannot be read: {e}.",
                    details={"reason": "unreadable", "member": name[:200]},
                ) from e
            yield Member(name, data)


def _tar_members(path: Path, limits: Limits) -> Iterator[Member]:
    tally = _Tally(limits)
    try:
        archive = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise InvalidArchive(
            "Not a zip or tar archive (plain, gzip, bzip2 or xz).",
            details={"reason": "unreadable"},
        ) from e
    with archive:
        try:
            for info in archive:
                tally.entry()
                name = checked_name(info.name)
                if not (info.isfile() or info.isdir()):
                    raise InvalidArchive(
                        f"Member {info.name[:200]!r} is a link or a device, not a file.",
                        details={"reason": "link", "member": info.name[:200]},
                    )
                if name is None or info.isdir():
                    continue
                stream = archive.extractfile(info)
                if stream is None:
                    continue
                yield Member(name, tally.read(name, info.size, stream))
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise InvalidArchive(
                f"The tar archive is damaged: {e}.", details={"reason": "unreadable"}
            ) from e
