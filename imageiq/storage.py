"""Where stored uploads live: an S3 bucket, or files under ``data_dir/images``.

Objects are content-addressed (their SHA-256 names them), so storing the same image twice
keeps one copy and a retried put is harmless. The name is the hash of the bytes the client
sent; what is stored is those bytes without personal metadata (EXIF with its GPS position,
XMP, IPTC, comments: :mod:`imageiq.privacy`), unless the store is told to keep it
(``keep_image_metadata``). Removing it here, in the one place every upload passes through
(a request's own store, or the recorder's retry after an outage), leaves no path that
stores an image with it. Every name is checked against ``[0-9a-f]{64}``
and every key against the one this store would produce, so nothing a client sends can reach
another path or object. Outages go through :class:`imageiq.health.Dependency`: logged once,
then refused at once during the cool-down instead of costing every request a timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from imageiq.errors import ConfigurationError, ImageNotFound, StorageUnavailable
from imageiq.health import Dependency
from imageiq.privacy import strip_metadata
from imageiq.settings import Settings

T = TypeVar("T")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_OBJECT = frozenset({"404", "NoSuchKey", "NotFound"})  # S3 error codes for "absent"


def _checked_sha(sha256: object) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 (64 lowercase hex digits): {str(sha256)[:80]!r}")
    return sha256


class ObjectStore(ABC):
    """The interface shared by both backends; the subclasses only move bytes."""

    backend: str
    # Errors that mean "the store is unreachable or broken", as opposed to a bad argument.
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, *, where: str, keep_metadata: bool = False) -> None:
        self.where = where  # for messages: bucket and endpoint, or the directory
        self.keep_metadata = keep_metadata
        self.dependency = Dependency("storage", backend=self.backend)

    @abstractmethod
    def key_for(self, sha256: str) -> str: ...

    def put(self, sha256: str, data: bytes, *, content_type: str) -> str:
        """Store ``data`` under its hash, without its personal metadata unless the store
        keeps it, and return the key. The hash is recomputed from the bytes as sent: a
        wrong one would file the image under another image's name, for good. Slow for a
        large image (it walks the file): call it from a worker thread."""
        key = self.key_for(sha256)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"data does not hash to {sha256}")
        if not self.keep_metadata:
            data = strip_metadata(data)
        self._call(lambda: self._put(key, sha256, data, content_type))
        return key

    def get(self, key: str) -> bytes:
        key = self._checked_key(key)
        data = self._call(lambda: self._get(key))
        if data is None:
            raise ImageNotFound(f"no stored image {key}")
        return data

    def exists(self, key: str) -> bool:
        key = self._checked_key(key)
        return self._call(lambda: self._exists(key))

    def delete(self, key: str) -> None:
        """Idempotent: deleting what is not there is not an error."""
        key = self._checked_key(key)
        self._call(lambda: self._delete(key))

    @abstractmethod
    def check(self) -> None:
        """At start-up: fail with a clear message now rather than on the first upload."""

    def _checked_key(self, key: str) -> str:
        """Only keys this store produces: a key arrives from the database or a client, and
        must never name another file or object (``../``, absolute, another prefix)."""
        sha256 = key[-64:] if isinstance(key, str) else ""
        if not _SHA256.fullmatch(sha256) or self.key_for(sha256) != key:
            raise ValueError(f"not a key of this store: {str(key)[:120]!r}")
        return key

    def _call(self, operation: Callable[[], T]) -> T:
        cooldown = self.dependency.cooldown_s
        if not self.dependency.available():
            message = f"storage ({self.where}) is down; not retried for {cooldown:g} s"
            raise StorageUnavailable(message, retry_after=cooldown)
        try:
            result = operation()
        except self._errors as e:
            self.dependency.failed(e)
            message = f"storage ({self.where}) is unavailable: {e}"
            raise StorageUnavailable(message, retry_after=cooldown) from e
        self.dependency.succeeded()
        return result

    # What each backend implements; absent is None / False, never an exception.
    @abstractmethod
    def _put(self, key: str, sha256: str, data: bytes, content_type: str) -> None: ...
    @abstractmethod
    def _get(self, key: str) -> bytes | None: ...
    @abstractmethod
    def _exists(self, key: str) -> bool: ...
    @abstractmethod
    def _delete(self, key: str) -> None: ...


class LocalStore(ObjectStore):
    """Files under ``root``, fanned out by the first two hex digits (256 directories, so no
    single directory grows huge)."""

    backend = "local"

    def __init__(self, root: Path, *, keep_metadata: bool = False) -> None:
        self.root = root
        super().__init__(where=f"directory {root}", keep_metadata=keep_metadata)

    def key_for(self, sha256: str) -> str:
        sha256 = _checked_sha(sha256)
        return f"{sha256[:2]}/{sha256}"

    def check(self) -> None:
        """A directory that cannot be written is a deployment mistake (a read-only volume,
        wrong owner, a file in the way) that waiting will not fix: a configuration error."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root) as probe:
                probe.write(b"ok")
        except OSError as e:
            self.dependency.failed(e)
            message = f"stored images need a writable directory: {self.root}: {e.strerror or e}"
            raise ConfigurationError(message) from e
        self.dependency.succeeded()

    def _put(self, key: str, sha256: str, data: bytes, content_type: str) -> None:
        path = self.root / key
        if path.is_file():
            return  # written atomically, so a file that is there is whole
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file in the same directory, so os.replace is an atomic rename: a reader never
        # sees half an image, and a crash leaves at worst a stray .tmp, never a bad object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha256[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def _get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def _exists(self, key: str) -> bool:
        return (self.root / key).is_file()  # raises on EACCES, EIO, ...: only "absent" is False

    def _delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


class S3Store(ObjectStore):
    """Objects ``<prefix><sha256>`` in one bucket of any S3-compatible store. Short timeouts
    and one retry: an outage must cost a request seconds, not minutes."""

    backend = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        endpoint_url: str | None,
        keep_metadata: bool = False,
    ) -> None:
        if endpoint_url and "@" in endpoint_url.partition("//")[2].partition("/")[0]:
            # It would be echoed in every error message and log line; boto3 ignores it anyway.
            raise ConfigurationError("s3_endpoint_url must not hold credentials (user:pass@)")
        from boto3.session import Session
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self.bucket, self.prefix = bucket, prefix
        self._errors = (BotoCoreError, ClientError, OSError)
        config = Config(
            connect_timeout=2, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        )
        # A session of our own: boto3's default session is not thread-safe to create from.
        self.client: Any = Session().client("s3", endpoint_url=endpoint_url, config=config)
        super().__init__(
            where=f"S3 bucket {bucket!r} at {endpoint_url or 'AWS'}", keep_metadata=keep_metadata
        )

    def key_for(self, sha256: str) -> str:
        return f"{self.prefix}{_checked_sha(sha256)}"

    def check(self) -> None:
        """A missing bucket is a configuration error; an unreachable store is an outage."""
        try:
            self._call(lambda: self.client.head_bucket(Bucket=self.bucket))
        except StorageUnavailable as e:
            if _code(e.__cause__) in ("404", "NoSuchBucket"):
                message = f"{self.where}: no such bucket (check IMAGEIQ_S3_BUCKET)"
                raise ConfigurationError(message) from e.__cause__
            raise

    def _put(self, key: str, sha256: str, data: bytes, content_type: str) -> None:
        # Lets an audit re-check objects without a database: the upload's hash names the
        # object, and the stored bytes' own hash differs when metadata was removed.
        metadata = {"sha256": sha256, "content-sha256": hashlib.sha256(data).hexdigest()}
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata
        )

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as e:
            if _code(e) in _NO_OBJECT:
                return None
            raise

    def _exists(self, key: str) -> bool:
        try:
            return bool(self.client.head_object(Bucket=self.bucket, Key=key))
        except Exception as e:
            if _code(e) in _NO_OBJECT:
                return False
            raise

    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


def _code(error: BaseException | None) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def build_store(settings: Settings) -> ObjectStore:
    """The bucket when one is configured, else the data directory."""
    keep = settings.keep_image_metadata
    if settings.s3_bucket:
        bucket, prefix = settings.s3_bucket, settings.s3_prefix
        return S3Store(
            bucket=bucket, prefix=prefix, endpoint_url=settings.s3_endpoint_url, keep_metadata=keep
        )
    return LocalStore(settings.data_dir / "images", keep_metadata=keep)
