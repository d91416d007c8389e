"""A job's source turned into its items (refs, in order), checked before anything is kept.

- ``s3_prefix``: every object under ``s3://bucket/prefix`` (folders' marker objects and
  hidden files skipped), in key order.
- ``manifest``: an object listing one image per line: a ``.jsonl`` line is a JSON string or
  an object with ``uri``/``key``/``path``; a ``.csv`` has a header with one of those
  columns; any other file is one entry per line (``#`` comments and blank lines skipped).
  An entry is a key relative to the manifest's folder, or an ``s3://`` URI in an allowed
  bucket; one with ``..``, a leading ``/``, a backslash, a control character or another
  scheme refuses the whole manifest (422 ``invalid_manifest``, with its line number).
- ``image_ids``: stored images (their sha256); an unknown id refuses the job.
- an uploaded archive (:mod:`imageiq.jobs.archives`): checked whole, then each member is
  put in the service's object store (content-addressed, so a re-upload costs nothing) and
  becomes a ``store:`` ref.

Every source is bounded by ``jobs_max_items`` (413 ``too_many_items``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from imageiq import errors
from imageiq.db.schema import Image
from imageiq.jobs.archives import Limits, iter_members
from imageiq.jobs.blobs import (
    CORRUPT_SCHEME,
    S3_SCHEME,
    STORE_SCHEME,
    Blobs,
    check_bucket,
    s3_error_code,
    split_s3,
)
from imageiq.settings import Settings

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COLUMNS = ("uri", "key", "path", "image")
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class Plan:
    source: dict[str, Any]  # what the job row keeps: the kind and where, never a secret
    refs: list[str]


def _too_many(settings: Settings) -> errors.TooManyItems:
    limit = settings.jobs_max_items
    return errors.TooManyItems(
        f"A job holds at most {limit} images (IMAGEIQ_JOBS_MAX_ITEMS); split the source.",
        details={"max_items": limit},
    )


def from_prefix(settings: Settings, blobs: Blobs, uri: str) -> Plan:
    bucket, prefix = split_s3(uri)
    check_bucket(settings, bucket)
    refs: list[str] = []
    try:
        pages = blobs.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for entry in page.get("Contents", []):
                key = entry["Key"]
                name = key.rsplit("/", 1)[-1]
                if not name or name.startswith("."):
                    continue
                refs.append(f"{S3_SCHEME}{bucket}/{key}")
                if len(refs) > settings.jobs_max_items:
                    raise _too_many(settings)
    except errors.ImageIQError:
        raise
    except Exception as e:
        if s3_error_code(e) in ("NoSuchBucket", "404"):
            raise errors.InvalidSource(f"No bucket {bucket!r}.", details={"bucket": bucket}) from e
        raise errors.StorageUnavailable(f"Listing {uri[:300]!r} failed: {e}") from e
    if not refs:
        raise errors.InvalidSource(
            f"Nothing to classify under {uri[:300]!r}.", details={"uri": uri[:300]}
        )
    return Plan({"kind": "s3_prefix", "uri": uri}, refs)


def from_manifest(settings: Settings, blobs: Blobs, uri: str) -> Plan:
    bucket, key = split_s3(uri)
    check_bucket(settings, bucket)
    if not key or key.endswith("/"):
        raise errors.InvalidSource(f"{uri[:300]!r} names no manifest object.")
    limit = settings.jobs_max_manifest_bytes
    try:
        got = blobs.s3.get_object(Bucket=bucket, Key=key)
    except Exception as e:
        if s3_error_code(e) in ("NoSuchKey", "NoSuchBucket", "404"):
            raise errors.InvalidSource(
                f"No manifest at {uri[:300]!r}.", details={"uri": uri[:300]}
            ) from e
        raise errors.StorageUnavailable(f"Reading {uri[:300]!r} failed: {e}") from e
    if int(got.get("ContentLength") or 0) > limit:
        raise errors.InvalidManifest(
            f"The manifest is {got['ContentLength']} bytes; the most is {limit} "
            "(IMAGEIQ_JOBS_MAX_MANIFEST_BYTES).",
            details={"max_bytes": limit},
        )
    try:
        data = got["Body"].read(limit + 1)
    except Exception as e:
        raise errors.StorageUnavailable(f"Reading {uri[:300]!r} failed: {e}") from e
    if len(data) > limit:
        raise errors.InvalidManifest(
            f"The manifest is over {limit} bytes.", details={"max_bytes": limit}
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise errors.InvalidManifest("The manifest is not UTF-8 text.") from e
    folder = posixpath.dirname(key)
    refs: list[str] = []
    for line, entry in _entries(text, key):
        refs.append(manifest_ref(settings, entry, line=line, bucket=bucket, folder=folder))
        if len(refs) > settings.jobs_max_items:
            raise _too_many(settings)
    if not refs:
        raise errors.InvalidManifest("The manifest lists no images.", details={"uri": uri[:300]})
    return Plan({"kind": "manifest", "uri": uri}, refs)


def _entries(text: str, key: str) -> Iterator[tuple[int, str]]:
    lower = key.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise _bad_line(n, raw, "not JSON") from e
            if isinstance(value, dict):
                value = next((value[c] for c in _COLUMNS if c in value), None)
            if not isinstance(value, str):
                raise _bad_line(n, raw, f"no string {'/'.join(_COLUMNS)}")
            yield n, value
    elif lower.endswith(".csv"):
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        column = next((header.index(c) for c in _COLUMNS if c in header), None)
        if column is None:
            raise errors.InvalidManifest(
                f"The CSV manifest has no {'/'.join(_COLUMNS)} column (its header: {header[:10]}).",
                details={"line": 1},
            )
        for row in reader:
            n = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if column >= len(row):
                raise _bad_line(n, ",".join(row), "too few columns")
            yield n, row[column].strip()
    else:
        for n, raw in enumerate(text.splitlines(), start=1):
            entry = raw.strip()
            if entry and not entry.startswith("#"):
                yield n, entry


def _bad_line(line: int, entry: str, why: str) -> errors.InvalidManifest:
    return errors.InvalidManifest(
        f"Manifest line {line} is refused: {why} ({entry[:200]!r}).",
        details={"line": line, "entry": entry[:200]},
    )


def manifest_ref(settings: Settings, entry: str, *, line: int, bucket: str, folder: str) -> str:
    """One manifest entry -> the ref it names, or :class:`InvalidManifest`."""
    if entry.startswith(S3_SCHEME):
        try:
            other, key = split_s3(entry)
        except errors.InvalidSource as e:
            raise _bad_line(line, entry, e.message) from e
        try:
            check_bucket(settings, other)
        except errors.BucketNotAllowed as e:
            raise errors.BucketNotAllowed(
                f"Manifest line {line}: {e.message}", details={**e.details, "line": line}
            ) from e
        _check_key(key, line=line, entry=entry)
        return f"{S3_SCHEME}{other}/{key}"
    if "://" in entry or entry.lower().startswith(("file:", "http:", "https:", "data:")):
        raise _bad_line(line, entry, "only keys and s3:// URIs are read")
    _check_key(entry, line=line, entry=entry)
    return f"{S3_SCHEME}{bucket}/{posixpath.join(folder, entry) if folder else entry}"


def _check_key(key: str, *, line: int, entry: str) -> None:
    if not key or key.endswith("/"):
        raise _bad_line(line, entry, "it names no object")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise _bad_line(line, entry, f"longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        raise _bad_line(line, entry, "it holds control characters")
    if key.startswith("/") or "\\" in key:
        raise _bad_line(line, entry, "absolute paths and backslashes are refused")
    if any(part in ("..", ".") for part in key.split("/")):
        raise _bad_line(line, entry, "'..' and '.' path segments are refused")


def from_image_ids(settings: Settings, engine: Engine, ids: Sequence[str]) -> Plan:
    if not ids:
        raise errors.InvalidSource("image_ids is empty.")
    if len(ids) > settings.jobs_max_items:
        raise _too_many(settings)
    bad = [i for i in ids if not isinstance(i, str) or not _SHA256.match(i)]
    if bad:
        raise errors.InvalidSource(
            f"{len(bad)} image id(s) are not sha256 hex digests, e.g. {str(bad[0])[:80]!r}.",
            details={"invalid": [str(b)[:80] for b in bad[:10]]},
        )
    keys: dict[str, str] = {}
    unique = list(dict.fromkeys(ids))
    with engine.connect() as conn:
        for start in range(0, len(unique), 5000):
            part = unique[start : start + 5000]
            rows = conn.execute(
                select(Image.sha256, Image.storage_key).where(Image.sha256.in_(part))
            )
            keys.update({sha: key for sha, key in rows})
    missing = [i for i in unique if i not in keys]
    if missing:
        raise errors.ImageNotFound(
            f"{len(missing)} image id(s) are not stored images, e.g. {missing[0]}.",
            details={"missing": missing[:10], "count": len(missing)},
        )
    return Plan({"kind": "image_ids", "count": len(ids)}, [STORE_SCHEME + keys[i] for i in ids])


def from_archive(settings: Settings, blobs: Blobs, path: Path, *, filename: str | None) -> Plan:
    """Checks the whole archive first (nothing is kept from a bad one), then stores its
    members and returns their refs."""
    limits = Limits(
        members=settings.jobs_max_archive_members,
        member_bytes=settings.max_image_bytes,
        expanded_bytes=settings.jobs_max_archive_expanded_bytes,
    )
    count = 0
    for _ in iter_members(path, limits):
        count += 1
        if count > settings.jobs_max_items:
            raise _too_many(settings)
    if count == 0:
        raise errors.InvalidArchive(
            "The archive holds no files to classify.", details={"reason": "empty"}
        )
    refs = []
    for member in iter_members(path, limits):
        sha256 = hashlib.sha256(member.data).hexdigest()
        try:
            key = blobs.store.put(sha256, member.data, content_type="application/octet-stream")
        except ValueError:  # an image too damaged to strip of its metadata: never kept
            refs.append(f"{CORRUPT_SCHEME}{sha256}")
            continue
        refs.append(STORE_SCHEME + key)
    source: dict[str, Any] = {"kind": "archive", "members": count}
    if filename:
        source["filename"] = filename[:200]
    return Plan(source, refs)
