"""Domain errors. Each carries the HTTP status it maps to and a stable machine-readable code.

The service turns any of them into ``{"error": {"code", "message", "request_id"}}``; the CLI
prints the message and exits non-zero. Codes are part of the public API: never rename one.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ImageIQError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        # Seconds the client should wait before trying again (429 and 503: Retry-After).
        self.retry_after = retry_after


# --- request errors (4xx) -------------------------------------------------------------------
class InvalidRequest(ImageIQError):
    status, code = 400, "invalid_request"


class InvalidCursor(InvalidRequest):
    """A paging ``cursor`` the service did not hand out, or one of another query (strategy,
    model, filters): the client starts again without one."""

    code = "invalid_cursor"


class MalformedRequest(ImageIQError):
    status, code = 400, "malformed_request"


class InvalidTensor(ImageIQError):
    """A v2 inference request whose tensors the model cannot take (name, datatype, shape,
    data or binary sizes); the protocol answers these with 400."""

    status, code = 400, "invalid_tensor"


class EmptyImage(ImageIQError):
    status, code = 400, "empty_image"


class Unauthorized(ImageIQError):
    """No usable API key. The message never says whether a key exists."""

    status, code = 401, "unauthorized"


class Forbidden(ImageIQError):
    status, code = 403, "insufficient_scope"


class NotFound(ImageIQError):
    status, code = 404, "not_found"


class ImageNotFound(ImageIQError):
    status, code = 404, "image_not_found"


class KeyNotFound(ImageIQError):
    status, code = 404, "key_not_found"


class MethodNotAllowed(ImageIQError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(ImageIQError):
    status, code = 413, "payload_too_large"


class ImageTooLarge(ImageIQError):
    """Too many pixels: refused from the header, before decoding."""

    status, code = 413, "image_too_large"


class UnsupportedMediaType(ImageIQError):
    status, code = 415, "unsupported_media_type"


class UnsupportedImageFormat(ImageIQError):
    status, code = 415, "unsupported_image_format"


class MissingImage(ImageIQError):
    status, code = 422, "missing_image"


class InvalidParameter(ImageIQError):
    status, code = 422, "invalid_parameter"


class UnknownHead(InvalidParameter):
    """/v1/explain: ``head`` is not one of the model's heads (``details.heads`` lists them)."""

    code = "unknown_head"


class UnknownLabel(InvalidParameter):
    """/v1/explain: ``label`` is not a value of the head (``details.labels`` lists them)."""

    code = "unknown_label"


class CorruptImage(ImageIQError):
    status, code = 422, "corrupt_image"


class InvalidBase64(ImageIQError):
    status, code = 422, "invalid_base64"


class TooManyImages(ImageIQError):
    status, code = 413, "too_many_images"


class BodyTimeout(ImageIQError):
    """The client did not send its whole body within ``body_timeout_s``."""

    status, code = 408, "body_timeout"


class RateLimited(ImageIQError):
    status, code = 429, "rate_limited"


class TooManyConcurrentRequests(ImageIQError):
    """More requests of one API key in progress at once than ``max_in_flight_per_key``."""

    status, code = 429, "too_many_concurrent_requests"


class AuthThrottled(ImageIQError):
    """Too many failed authentications from one client address: its next attempts are
    refused unchecked for a while."""

    status, code = 429, "auth_throttled"


# --- bulk jobs (imageiq.jobs) ---------------------------------------------------------------
class JobNotFound(ImageIQError):
    status, code = 404, "job_not_found"


class JobFinished(ImageIQError):
    """The job already ended (succeeded, failed or cancelled): it cannot be cancelled."""

    status, code = 409, "job_finished"


class JobNotDone(ImageIQError):
    """Its results files are written when the job ends; the JSON Lines stream is there now."""

    status, code = 409, "job_not_done"


class BucketNotAllowed(ImageIQError):
    """A job's source is in a bucket outside ``jobs_allowed_buckets``."""

    status, code = 403, "bucket_not_allowed"


class InvalidSource(ImageIQError):
    """A job's source cannot be read as one: no such prefix or manifest, nothing under it."""

    status, code = 422, "invalid_source"


class InvalidManifest(InvalidSource):
    """A manifest line that is not a key or URI the job may read (``..``, another scheme,
    an absolute path): ``details`` has its line number."""

    code = "invalid_manifest"


class InvalidArchive(InvalidSource):
    """An uploaded archive that is not a zip or tar, or one that breaks a bound (members,
    sizes, compression ratio, names, links, nesting): refused before anything is kept."""

    code = "invalid_archive"


class TooManyItems(ImageIQError):
    """More images in one job than ``jobs_max_items``."""

    status, code = 413, "too_many_items"


class CallbackNotAllowed(ImageIQError):
    """A webhook URL that is not https/http, or that resolves to a private, loopback,
    link-local or otherwise internal address outside ``webhook_allowed_networks`` (SSRF)."""

    status, code = 422, "callback_not_allowed"


class ClientClosedRequest(ImageIQError):
    """The client went away before its answer (nginx's 499): counted, never a 5xx."""

    status, code = 499, "client_closed_request"


# --- availability (5xx) ---------------------------------------------------------------------
class ModelNotReady(ImageIQError):
    status, code = 503, "model_not_ready"


class Overloaded(ImageIQError):
    status, code = 503, "overloaded"


class BacklogFull(ImageIQError):
    """The records waiting for the database or the object store fill their byte budget:
    a new one is refused rather than accepted and then lost."""

    status, code = 503, "backlog_full"


class DatabaseUnavailable(ImageIQError):
    status, code = 503, "database_unavailable"


class CacheUnavailable(ImageIQError):
    status, code = 503, "cache_unavailable"


class StorageUnavailable(ImageIQError):
    status, code = 503, "storage_unavailable"


class JobsUnavailable(ImageIQError):
    """No task queue is configured (``jobs_broker_url`` / ``redis_url``), or it is down."""

    status, code = 503, "jobs_unavailable"


class IdentityProviderUnavailable(ImageIQError):
    """The OIDC issuer's keys cannot be fetched, and the token needs one not fetched before."""

    status, code = 503, "identity_provider_unavailable"


class Timeout(ImageIQError):
    status, code = 504, "timeout"


# --- configuration and model store (raised by the CLI, training and start-up) ---------------
class ConfigurationError(ImageIQError):
    status, code = 400, "configuration_error"


class UnknownArchitecture(ConfigurationError):
    code = "unknown_architecture"


class WeightsUnavailable(ConfigurationError):
    code = "weights_unavailable"


class WeightsFileMismatch(ConfigurationError):
    code = "weights_file_mismatch"


class DatabaseNotMigrated(ConfigurationError):
    code = "database_not_migrated"


class DatasetError(ConfigurationError):
    code = "dataset_error"


class ModelNotFound(ImageIQError):
    status, code = 404, "model_not_found"
