"""Labelled images from an ImageFolder, a CSV/JSONL manifest, or S3, as one result type.

Training, evaluation and the CLI should not care where images live: they get sorted samples,
the class and attribute-head vocabularies, a content fingerprint and a way to read the bytes.
A bad entry is skipped and reported, because one corrupt file among 100,000 should not stop a
run; a source that cannot be used at all is a ``DatasetError``.

Every sample keeps the sha256 of the bytes it was checked with (the fingerprint needs it
anyway), so the data set's **snapshot** saved with a model (:func:`snapshot_rows`, one JSON
line per image: id, where it came from, label, attributes, split) costs no second read, and
:func:`training.db_source.load_snapshot` can rebuild exactly that data set later.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from imageiq.errors import ConfigurationError, DatasetError, ImageIQError, ImageNotFound
from imageiq.images import decode_image
from training.data import scan_image_folder

if TYPE_CHECKING:
    from imageiq.settings import Settings
    from imageiq.storage import ObjectStore

MANIFEST_SUFFIXES = (".csv", ".jsonl")
PATH_COLUMNS = ("path_or_s3_uri", "path", "uri")
UNKNOWN = -100  # torch's CrossEntropyLoss ignore_index: an unknown attribute adds no loss
_S3_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_WORKERS = 8  # reads wait on disk or network; Pillow decodes with the GIL released
# An image the service stored, read from its object store by image id: ``store:<sha256>``.
STORE_SCHEME = "store:"
SNAPSHOT_FILE = "dataset.jsonl"  # the snapshot's name next to a registered model's weights
SPLITS = ("train", "held_out")

Progress = Callable[[int, int], None]
_Row = tuple[str, str, str, dict[str, str]]  # where, path as written, label, attributes


@dataclass(frozen=True)
class Sample:
    uri: str  # absolute local path, s3://bucket/key, or store:<image id>
    label: str
    attributes: dict[str, str]  # head -> value; "" = unknown for this image
    # Set once the bytes are checked: their sha256, and the image's name in the fingerprint
    # (its path relative to the source, or its image id), kept for the snapshot.
    sha256: str = ""
    name: str = ""


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
    """Bytes of a local path, an s3:// URI, or ``store:<image id>``: an image the service
    stored, read from the object store ``settings`` name (:func:`imageiq.storage.build_store`).
    The boto3 client and the store are made on first use, per process: they are left out when
    pickled (spawned DataLoader workers rebuild them from ``s3`` and ``settings``) and remade
    after a fork (forked workers), since a connection pool must not be shared between
    processes."""

    def __init__(self, *, s3: S3Options | None = None, settings: Settings | None = None) -> None:
        self.s3 = s3 or S3Options()
        self.settings = settings
        self._client: Any = None
        self._store: ObjectStore | None = None
        self._lock, self._pid = threading.Lock(), os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {"s3": self.s3, "settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        fresh = BlobReader(s3=state["s3"], settings=state.get("settings"))
        self.__dict__.update(fresh.__dict__)

    def read(self, uri: str) -> bytes:
        """Raises ``DatasetError`` (details: uri, reason) when this file or object cannot be
        read. botocore's connection and credential errors, and the object store's
        ``StorageUnavailable``, pass through: they are about the store, not this image, and
        the caller decides whether that is fatal."""
        try:
            if uri.startswith("s3://"):
                bucket, key = split_s3_uri(uri)
                return bytes(self._s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
            if uri.startswith(STORE_SCHEME):
                return self._read_stored(uri)
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

    def _read_stored(self, uri: str) -> bytes:
        store = self._object_store()
        try:
            key = store.key_for(uri.removeprefix(STORE_SCHEME))
        except ValueError as e:
            reason = "not an image id (64 lowercase hex digits)"
            raise DatasetError(
                f"Could not read {uri}: {reason}.", details={"uri": uri, "reason": reason}
            ) from e
        try:
            return store.get(key)
        except ImageNotFound as e:
            reason = f"not found in {store.where}"
            raise DatasetError(
                f"Could not read {uri}: {reason}.", details={"uri": uri, "reason": reason}
            ) from e

    def _object_store(self) -> ObjectStore:
        from imageiq.storage import build_store

        if self.settings is None:
            raise ConfigurationError(
                "Images named store:<image id> are read from the service's object store: "
                "give the reader the settings that name it."
            )
        self._same_process()
        with self._lock:
            if self._store is None:
                self._store = build_store(self.settings)
            return self._store

    def _same_process(self) -> None:
        if self._pid != os.getpid():
            self._client, self._store = None, None
            self._lock, self._pid = threading.Lock(), os.getpid()

    def _s3_client(self) -> Any:
        self._same_process()
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
    # Per sample, "train" or "held_out": the split a snapshot recorded, when the data was
    # rebuilt from one that did; None otherwise.
    split: tuple[str, ...] | None = None

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
    checked = check_samples(
        candidates, reader=reader, max_pixels=max_pixels, check=check, progress=progress
    )
    samples = []
    for sample, (sha, reason) in zip(candidates, checked, strict=True):
        if reason:
            skipped.append((sample.uri, reason))
            continue
        samples.append(replace(sample, sha256=sha, name=_relative_key(sample.uri, base)))
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
    fingerprint = dataset_fingerprint(samples, with_attributes=bool(head_names))
    return LabelledData(text, classes, heads, samples, skipped, fingerprint, reader)


def dataset_fingerprint(samples: Iterable[Sample], *, with_attributes: bool) -> str:
    """sha256 over the sorted (name, label, [attributes,] sha256 of the bytes) rows of checked
    samples: the same fingerprint means the same images under the same labels, wherever they
    are read from. Without attribute heads the row is training/data.py's, so a folder keeps
    its fingerprint."""
    rows = []
    for sample in samples:
        attrs = json.dumps(sample.attributes, sort_keys=True, ensure_ascii=False)
        attrs = f"{attrs}\t" if with_attributes else ""
        rows.append(f"{sample.name}\t{sample.label}\t{attrs}{sample.sha256}\n")
    digest = hashlib.sha256()
    for row in sorted(rows):
        digest.update(row.encode())
    return "sha256:" + digest.hexdigest()


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


def check_samples(
    samples: Sequence[Sample],
    *,
    reader: BlobReader,
    max_pixels: int,
    check: bool = True,
    progress: Progress | None = None,
) -> list[tuple[str, str]]:
    """(sha256, "") or ("", reason) per sample, in order whatever the threads' timing: each
    is read once (the fingerprint is over the bytes) and, with ``check``, decoded as the
    server would, so a file that would fail mid-epoch is skipped now."""

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


# --- dataset snapshots ------------------------------------------------------------------------
def image_id(sample: Sample) -> str:
    """The image's id: the service's id of a stored image (the sha256 of the bytes its client
    sent, which the store may have kept without their metadata), else the sha256 of the bytes
    read."""
    if sample.uri.startswith(STORE_SCHEME):
        return sample.uri.removeprefix(STORE_SCHEME)
    return sample.sha256


def snapshot_rows(
    data: LabelledData,
    train_idx: Sequence[int] | None = None,
    val_idx: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One row per sample of ``data``, in its order: ``id`` (:func:`image_id`), ``sha256`` of
    the bytes read, ``uri`` (where they came from), ``name`` (its name in the fingerprint),
    ``label``, ``attributes``, and ``split`` ("train" or "held_out") for the indices given:
    what rebuilding the same data set needs, and what proves it unchanged."""
    split: dict[int, str] = {}
    for name, indices in zip(SPLITS, (train_idx or [], val_idx or []), strict=True):
        for i in indices:
            if not 0 <= i < len(data.samples) or i in split:
                raise ValueError(f"split index {i} is out of range or in both splits")
            split[i] = name
    rows = []
    for i, sample in enumerate(data.samples):
        if not sample.sha256:
            raise ValueError(f"{sample.uri} was not checked: it has no sha256 to snapshot")
        row: dict[str, Any] = {
            "id": image_id(sample),
            "sha256": sample.sha256,
            "uri": sample.uri,
            "name": sample.name,
            "label": sample.label,
            "attributes": sample.attributes,
        }
        if i in split:
            row["split"] = split[i]
        rows.append(row)
    return rows


def write_snapshot(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSON Lines (UTF-8, keys sorted): one row per line, diffable and streamable."""
    lines = (json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)
    return "".join(lines).encode()


def read_snapshot(content: bytes) -> list[dict[str, Any]]:
    """The rows :func:`write_snapshot` wrote; a malformed one is a ``DatasetError`` naming
    its line, since a snapshot that is not what was saved cannot rebuild anything exactly."""
    try:
        text = content.decode()
    except UnicodeDecodeError as e:
        raise DatasetError(f"The dataset snapshot is not UTF-8 text ({e.reason}).") from e
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"Dataset snapshot line {n} is not valid JSON ({e.msg}).") from e
        problem = _snapshot_row_problem(row)
        if problem:
            raise DatasetError(f"Dataset snapshot line {n}: {problem}.")
        rows.append(row)
    return rows


def snapshot_entry(content: bytes, *, images: int) -> dict[str, Any]:
    """The model card's ``dataset_snapshot``: the file, its images and its sha256 (checked
    before a rebuild)."""
    return {"file": SNAPSHOT_FILE, "images": images, "sha256": hashlib.sha256(content).hexdigest()}


def _snapshot_row_problem(row: object) -> str:
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in ("id", "sha256", "uri", "name", "label"):
        if not isinstance(row.get(key), str) or not row[key]:
            return f"{key!r} must be a non-empty string"
    attributes = row.get("attributes")
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        return "'attributes' must be an object of strings"
    if "split" in row and row["split"] not in SPLITS:
        return f"'split' must be one of {', '.join(SPLITS)}"
    return ""
