"""Labelled images from an ImageFolder, a CSV/JSONL manifest, or S3, as one result type.

Training, evaluation and the CLI should not care where images live: they get sorted samples,
the class and attribute-head vocabularies, a content fingerprint and a way to read the bytes.
A bad entry is skipped and reported, because one corrupt file among 100,000 should not stop a
run; a source that cannot be used at all is a ``DatasetError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from imageiq.errors import DatasetError, ImageIQError
from imageiq.images import decode_image
from training.data import scan_image_folder

MANIFEST_SUFFIXES = (".csv", ".jsonl")
PATH_COLUMNS = ("path_or_s3_uri", "path", "uri")
UNKNOWN = -100  # torch's CrossEntropyLoss ignore_index: an unknown attribute adds no loss
_S3_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_WORKERS = 8  # reads wait on disk or network; Pillow decodes with the GIL released

Progress = Callable[[int, int], None]
_Row = tuple[str, str, str, dict[str, str]]  # where, path as written, label, attributes


@dataclass(frozen=True)
class Sample:
    uri: str  # absolute local path, or s3://bucket/key
    label: str
    attributes: dict[str, str]  # head -> value; "" = unknown for this image


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None  # any S3-compatible endpoint (MinIO, moto); None = AWS
    region_name: str | None = None  # credentials come from boto3's usual chain


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        reason = "not an S3 object URI (s3://bucket/key)"
        raise DatasetError(f"{uri!r} is {reason}.", details={"uri": uri, "reason": reason})
    return bucket, key


class BlobReader:
    """Bytes of a local path or an s3:// URI. The boto3 client is made on first use, per
    process: it is left out when pickled (spawned DataLoader workers) and remade after a fork
    (forked workers), since a client's connection pool must not be shared between processes."""

    def __init__(self, *, s3: S3Options | None = None) -> None:
        self.s3 = s3 or S3Options()
        self._client: Any = None
        self._lock, self._pid = threading.Lock(), os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"s3": self.s3}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(BlobReader(s3=state["s3"]).__dict__)

    def read(self, uri: str) -> bytes:
        """Raises ``DatasetError`` (details: uri, reason) when this file or object cannot be
        read. botocore's connection and credential errors pass through: they are about the
        store, not this image, and the caller decides whether that is fatal."""
        try:
            if uri.startswith("s3://"):
                bucket, key = split_s3_uri(uri)
                return bytes(self._s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
            return Path(uri).read_bytes()
        except FileNotFoundError:
            reason = "not found"
        except OSError as e:
            reason = f"unreadable ({e.strerror or type(e).__name__})"
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", "unknown"))
            reason = "not found" if code in _S3_MISSING else f"unreadable (S3 error {code})"
        raise DatasetError(
            f"Could not read {uri}: {reason}.", details={"uri": uri, "reason": reason}
        )

    def _s3_client(self) -> Any:
        if self._pid != os.getpid():
            self._client, self._lock, self._pid = None, threading.Lock(), os.getpid()
        with self._lock:  # creating clients is not thread-safe; using one is
            if self._client is None:
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=self.s3.endpoint_url, region_name=self.s3.region_name
                )
            return self._client


@dataclass(frozen=True)
class LabelledData:
    source: str  # the directory or manifest as given
    classes: list[str]  # sorted label names
    heads: dict[str, list[str]]  # attribute head -> sorted distinct known values
    samples: list[Sample]  # the usable ones, sorted by uri
    skipped: list[tuple[str, str]]  # (uri or "manifest line N", reason)
    fingerprint: str  # the same fingerprint: the same bytes under the same labels
    reader: BlobReader = field(default_factory=BlobReader, repr=False, compare=False)

    @property
    def targets(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.samples]

    def head_targets(self, head: str) -> list[int]:
        """Index into ``heads[head]`` per sample, ``UNKNOWN`` (-100) where not labelled."""
        if head not in self.heads:
            known = ", ".join(self.heads) or "none"
            raise DatasetError(f"Unknown attribute head {head!r}; this data has: {known}.")
        index = {v: i for i, v in enumerate(self.heads[head])}
        return [index.get(s.attributes.get(head, ""), UNKNOWN) for s in self.samples]

    def read(self, i: int) -> bytes:
        return self.reader.read(self.samples[i].uri)


def load_data(
    source: str | Path,
    *,
    max_pixels: int,
    s3: S3Options | None = None,
    check: bool = True,
    progress: Progress | None = None,
) -> LabelledData:
    """Index ``source``: an ImageFolder directory, or a ``.csv``/``.jsonl`` manifest (local or
    ``s3://``). Every image is read once, because the fingerprint is over the bytes; ``check``
    also decodes it as the server would, so a file that would fail mid-epoch is skipped now."""
    text, reader = str(source), BlobReader(s3=s3)
    skipped: list[tuple[str, str]] = []
    if not text.startswith("s3://") and Path(text).is_dir():
        root = Path(os.path.abspath(text))
        index = scan_image_folder(root)
        head_names: list[str] = []
        entries = [
            (Sample(str(p), index.classes[t], {}), str(p))
            for p, t in zip(index.paths, index.targets, strict=True)
        ]
        base = str(root)
    else:
        head_names, entries, base = _read_manifest(text, reader=reader, skipped=skipped)
    candidates = sorted(_drop_duplicates(entries, skipped=skipped), key=lambda s: s.uri)
    checked = _check_all(
        candidates, reader=reader, max_pixels=max_pixels, check=check, progress=progress
    )
    samples, rows_for_fingerprint = [], []
    for sample, (sha, reason) in zip(candidates, checked, strict=True):
        if reason:
            skipped.append((sample.uri, reason))
            continue
        samples.append(sample)
        key = _relative_key(sample.uri, base)
        # Without heads the row is training/data.py's, so a folder keeps its fingerprint.
        attrs = json.dumps(sample.attributes, sort_keys=True, ensure_ascii=False)
        attrs = f"{attrs}\t" if head_names else ""
        rows_for_fingerprint.append(f"{key}\t{sample.label}\t{attrs}{sha}\n")
    classes = sorted({s.label for s in samples})
    if len(classes) < 2:
        raise DatasetError(
            f"{text} needs at least 2 classes of usable images; found {len(classes)} "
            f"({len(samples)} images kept, {len(skipped)} skipped"
            + "".join(f"; {where}: {reason}" for where, reason in skipped[:3])
            + ")."
        )
    heads = {h: sorted({s.attributes[h] for s in samples} - {""}) for h in head_names}
    for head, values in heads.items():
        if len(values) < 2:
            raise DatasetError(
                f"Attribute {head!r} in {text} needs at least 2 known values among the usable "
                f"images; found {values or 'none'}. Leave the column out if it is not a head."
            )
    digest = hashlib.sha256()
    for row in sorted(rows_for_fingerprint):
        digest.update(row.encode())
    return LabelledData(
        text, classes, heads, samples, skipped, "sha256:" + digest.hexdigest(), reader
    )


def _read_manifest(
    source: str, *, reader: BlobReader, skipped: list[tuple[str, str]]
) -> tuple[list[str], list[tuple[Sample, str]], str]:
    """(attribute heads, (sample, "manifest line N") entries, the base relative paths
    resolve against)."""
    is_s3 = source.startswith("s3://")
    if not is_s3 and not Path(source).exists():
        raise DatasetError(f"Data source {source} does not exist.")
    suffix = posixpath.splitext(source)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise DatasetError(
            f"Data source {source} must be an ImageFolder directory or a manifest ending in "
            f"{' or '.join(MANIFEST_SUFFIXES)}, not {suffix or 'a file without extension'}."
        )
    location = source if is_s3 else os.path.abspath(source)
    base = location.rsplit("/", 1)[0] + "/" if is_s3 else os.path.dirname(location)
    try:
        raw = reader.read(location)
    except DatasetError as e:
        raise DatasetError(
            f"Could not read the manifest {source}: {e.details.get('reason', e)}."
        ) from e
    except BotoCoreError as e:
        raise _unreachable(e) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"The manifest {source} is not UTF-8 text ({e.reason}).") from e
    if suffix == ".csv":
        heads, rows = _csv_rows(text, source=source, skipped=skipped)
    else:
        heads, rows = _jsonl_rows(text, skipped=skipped)
    entries, head_names = [], sorted(heads)
    for where, path, label, attrs in rows:
        if not path or not label:
            skipped.append((where, "empty path" if not path else "empty label"))
            continue
        attributes = {h: attrs.get(h, "") for h in head_names}
        entries.append((Sample(_resolve(path, base), label, attributes), where))
    return head_names, entries, base


def _csv_rows(
    text: str, *, source: str, skipped: list[tuple[str, str]]
) -> tuple[list[str], list[_Row]]:
    reader = csv.reader(io.StringIO(text))
    try:
        names = [n.strip() for n in next(reader, [])]
        path_col = next((n for n in PATH_COLUMNS if n in names), None)
        if path_col is None or "label" not in names or len(set(names)) != len(names) or "" in names:
            raise DatasetError(
                f"The manifest {source} needs a header row with a path column "
                f"({', '.join(PATH_COLUMNS)}) and a 'label' column, every column named once; "
                f"found: {', '.join(map(repr, names)) or 'nothing'}."
            )
        rows: list[_Row] = []
        for cells in reader:
            where = f"manifest line {reader.line_num}"
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(names):
                skipped.append((where, f"{len(cells)} columns, the header has {len(names)}"))
                continue
            row = {n: c.strip() for n, c in zip(names, cells, strict=True)}
            rows.append((where, row.pop(path_col), row.pop("label"), row))
    except csv.Error as e:
        raise DatasetError(f"The manifest {source} is not readable CSV: {e}.") from e
    return [n for n in names if n not in (path_col, "label")], rows


def _jsonl_rows(text: str, *, skipped: list[tuple[str, str]]) -> tuple[list[str], list[_Row]]:
    heads: set[str] = set()
    rows: list[_Row] = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 is valid in JSON
        where = f"manifest line {n}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skipped.append((where, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            skipped.append((where, "not a JSON object"))
            continue
        path, uri = obj.pop("path", None), obj.pop("uri", None)
        path = uri if path is None else path
        values = {k: _scalar(v) for k, v in obj.items()}
        if _scalar(path) is None or None in values.values():
            skipped.append((where, "values must be strings, numbers, booleans or null"))
            continue
        label = values.pop("label", "") or ""
        heads.update(values)
        rows.append((where, _scalar(path) or "", label, {k: v or "" for k, v in values.items()}))
    return list(heads), rows


def _scalar(value: object) -> str | None:
    """JSON scalars as the text a CSV cell would hold (true, 3, ""); None for lists and objects."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value) if isinstance(value, (bool, int, float)) else None


def _resolve(path: str, base: str) -> str:
    """Relative paths resolve against the manifest's directory, local or S3 (as URLs do)."""
    if path.startswith("s3://"):
        return path
    if base.startswith("s3://"):
        bucket, prefix = base.removeprefix("s3://").split("/", 1)
        return f"s3://{bucket}/{posixpath.normpath(posixpath.join(prefix, path)).lstrip('/')}"
    return os.path.normpath(os.path.join(base, path))


def _relative_key(uri: str, base: str) -> str:
    """The fingerprint names an image relative to its source, so a moved copy matches."""
    prefix = base if base.endswith(("/", os.sep)) else base + os.sep
    return Path(uri[len(prefix) :]).as_posix() if uri.startswith(prefix) else uri


def _drop_duplicates(
    entries: Sequence[tuple[Sample, str]], *, skipped: list[tuple[str, str]]
) -> list[Sample]:
    """One sample per image: repeats would weigh it twice and leak across splits; an image
    listed under different labels is dropped altogether, whichever row came first."""
    groups: dict[str, list[tuple[Sample, str]]] = {}
    for sample, where in entries:
        groups.setdefault(sample.uri, []).append((sample, where))
    kept = []
    for uri, group in groups.items():
        first, first_where = group[0]
        if any(sample != first for sample, _ in group[1:]):
            skipped.extend(
                (w, f"{uri} is listed with different labels or attributes") for _, w in group
            )
            continue
        skipped.extend((w, f"duplicate of {first_where}") for _, w in group[1:])
        kept.append(first)
    return kept


def _check_all(
    samples: Sequence[Sample],
    *,
    reader: BlobReader,
    max_pixels: int,
    check: bool,
    progress: Progress | None,
) -> list[tuple[str, str]]:
    """(sha256, "") or ("", reason) per sample, in order whatever the threads' timing."""

    def inspect(sample: Sample) -> tuple[str, str]:
        try:
            data = reader.read(sample.uri)
        except DatasetError as e:
            return "", str(e.details.get("reason", e))
        if check:
            try:
                decode_image(data, max_pixels=max_pixels).close()
            except ImageIQError as e:
                return "", f"{e.code}: {e.message}"
            except Exception as e:  # any other decoder failure is this image's problem too
                return "", f"could not be decoded ({type(e).__name__})"
        return hashlib.sha256(data).hexdigest(), ""

    results: list[tuple[str, str]] = []
    if progress:
        progress(0, len(samples))
    pool = ThreadPoolExecutor(max_workers=_WORKERS)
    try:
        for result in pool.map(inspect, samples):
            results.append(result)
            if progress:
                progress(len(results), len(samples))
    except BotoCoreError as e:
        raise _unreachable(e) from e
    finally:
        pool.shutdown(cancel_futures=True)
    return results


def _unreachable(e: BotoCoreError) -> DatasetError:
    return DatasetError(f"Could not use S3 ({e}); check the endpoint, region and credentials.")
