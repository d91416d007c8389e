"""Where a job's images are, and reading them: an item's ``ref`` is ``s3://bucket/key`` (an
S3 prefix or a manifest; any S3-compatible store at ``s3_endpoint_url``) or
``store:<key>`` (an object of the service's own store: a stored image, an archive member;
the image's sha256 is the key's end, the hash of the bytes as sent).

A missing object is the item's own error (``image_not_found``), never the chunk's; an
unreachable store is :class:`~imageiq.errors.StorageUnavailable`, which the worker retries.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from imageiq import errors
from imageiq.settings import Settings
from imageiq.storage import ObjectStore, build_store

S3_SCHEME = "s3://"
STORE_SCHEME = "store:"
# An archive member that could not be kept (too damaged to strip of its metadata): the
# item fails with corrupt_image, its sha256 recorded.
CORRUPT_SCHEME = "corrupt:"
_NO_OBJECT = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty (a whole bucket)."""
    if not uri.startswith(S3_SCHEME):
        raise errors.InvalidSource(
            f"{uri[:200]!r} is not an s3://bucket/key URI.", details={"uri": uri[:200]}
        )
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise errors.InvalidSource(f"{uri[:200]!r} names no bucket.", details={"uri": uri[:200]})
    return bucket, key


def check_bucket(settings: Settings, bucket: str) -> None:
    """403 ``bucket_not_allowed`` unless the bucket is the service's or an allowed one."""
    allowed = {
        *settings.jobs_allowed_buckets,
        *([settings.s3_bucket] if settings.s3_bucket else []),
    }
    if bucket not in allowed:
        raise errors.BucketNotAllowed(
            f"Jobs may not read bucket {bucket[:100]!r}: the buckets allowed are "
            f"{sorted(allowed) or 'none'} (IMAGEIQ_JOBS_ALLOWED_BUCKETS).",
            details={"bucket": bucket[:100], "allowed": sorted(allowed)},
        )


def s3_error_code(error: BaseException) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


class Blobs:
    """Reads refs; thread-safe (boto3 clients are), one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()

    @functools.cached_property
    def store(self) -> ObjectStore:
        return build_store(self.settings)

    @functools.cached_property
    def s3(self) -> Any:
        """An S3 client for the job's buckets, at the store's endpoint and credentials."""
        from boto3.session import Session
        from botocore.config import Config

        config = Config(
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            # One connection per reader thread (botocore's default pool is 10).
            max_pool_connections=self.settings.jobs_read_concurrency + 4,
        )
        with self._lock:
            return Session().client("s3", endpoint_url=self.settings.s3_endpoint_url, config=config)

    def read(self, ref: str) -> bytes:
        if ref.startswith(CORRUPT_SCHEME):
            raise errors.CorruptImage("The image is too damaged to read (it was not kept).")
        if ref.startswith(STORE_SCHEME):
            return self.store.get(ref[len(STORE_SCHEME) :])
        bucket, key = split_s3(ref)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            return bytes(body.read(self.settings.max_image_bytes + 1))
        except Exception as e:
            if s3_error_code(e) in _NO_OBJECT:
                raise errors.ImageNotFound(f"No object {ref[:300]!r}.") from e
            raise errors.StorageUnavailable(f"Reading {ref[:300]!r} failed: {e}") from e
