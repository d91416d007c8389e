"""Archives are read without trusting them: every bound breached is refused, by name."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from imageiq.errors import InvalidArchive
from imageiq.jobs.archives import Limits, check_archive, checked_name, iter_members

LIMITS = Limits(members=100, member_bytes=1_000_000, expanded_bytes=3_000_000)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _reason(path: Path, limits: Limits = LIMITS) -> str:
    with pytest.raises(InvalidArchive) as caught:
        check_archive(path, limits)
    return str(caught.value.details["reason"])


def test_members_in_order_folders_and_hidden_files_skipped(tmp_path: Path) -> None:
    path = _zip(
        tmp_path / "a.zip",
        {
            "b/2.png": b"two",
            "a/1.jpg": b"one",
            "__MACOSX/a/._1.jpg": b"fork",
            ".DS_Store": b"finder",
            "./c/./3.webp": b"three",
        },
    )
    members = list(iter_members(path, LIMITS))
    assert [(m.name, m.data) for m in members] == [
        ("b/2.png", b"two"),
        ("a/1.jpg", b"one"),
        ("c/3.webp", b"three"),
    ]
    assert check_archive(path, LIMITS) == 3


def test_a_zip_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = _zip(tmp_path / "bomb.zip", {"zeros.png": b"\0" * 50_000_000})
    assert path.stat().st_size < 100_000
    assert _reason(path) == "member_too_large"


def test_a_member_whose_header_lies_about_its_size_is_caught(tmp_path: Path) -> None:
    path = _zip(tmp_path / "liar.zip", {"x.png": b"\1" * 2_000_000})
    raw = bytearray(path.read_bytes())
    # Rewrite the declared sizes (local header and central directory) to 10 bytes.
    info = zipfile.ZipFile(path).infolist()[0]
    for offset in (info.header_offset + 22, raw.rfind(b"PK\x01\x02") + 24):
        raw[offset : offset + 4] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert _reason(path) in ("member_too_large", "unreadable")


def test_many_small_members_add_up(tmp_path: Path) -> None:
    members = {f"{i}.png": bytes(900_000) for i in range(4)}
    assert _reason(_zip(tmp_path / "sum.zip", members)) == "too_large_expanded"
    many = {f"{i}.png": b"x" for i in range(101)}
    assert _reason(_zip(tmp_path / "many.zip", many)) == "too_many_members"


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../escape.png",
        "a/../../escape.png",
        "C:/Windows/x.png",
        "a\\..\\x.png",
        "a/\x00b.png",
        "new\nline.png",
        "/".join(["d"] * 20) + "/x.png",
        "x" * 2000 + ".png",
    ],
)
def test_bad_member_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArchive) as caught:
        checked_name(name)
    assert caught.value.details["reason"] == "bad_member_name"


@pytest.mark.parametrize("name", ["inner.zip", "a/b.tar.gz", "c.tgz", "d.7z"])
def test_nested_archives_are_refused(name: str) -> None:
    with pytest.raises(InvalidArchive) as caught:
        checked_name(name)
    assert caught.value.details["reason"] == "nested_archive"


def _tar(path: Path, add: list[tarfile.TarInfo], data: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as t:
        for info in add:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            t.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_archives_of_every_compression(tmp_path: Path, mode: str) -> None:
    path = _tar(tmp_path / "a.tar", [tarfile.TarInfo("x/1.png")], {"x/1.png": b"one"}, mode)
    assert [(m.name, m.data) for m in iter_members(path, LIMITS)] == [("x/1.png", b"one")]


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("x/evil.png")
    info.type, info.linkname = kind, "/etc/passwd"
    path = _tar(tmp_path / "l.tar", [info], {}, "w")
    assert _reason(path) == "link"


def test_a_tar_member_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = _tar(
        tmp_path / "big.tar.gz", [tarfile.TarInfo("big.png")], {"big.png": bytes(1_500_000)}, "w:gz"
    )
    assert _reason(path) == "member_too_large"


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"hello " * 1000)
    assert _reason(tmp_path / "x") == "unreadable"
    (tmp_path / "y").write_bytes(b"PK\x03\x04 broken")
    assert _reason(tmp_path / "y") == "unreadable"
