"""The one settings object (environment variables prefixed ``IMAGEIQ_``, and an optional
YAML config file).

It is built once at each entry point (the CLI's ``main``, the BentoML service module) and
passed down; nothing else reads the environment. The service builds it again when the
config file changes, to pick up the reloadable keys (:data:`RELOADABLE`) without a restart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from imageiq.errors import ConfigurationError

MiB = 1024 * 1024

# BentoML's rule for a tag's name and version: 1-63 characters, alphanumeric at both ends.
TAG_PART = r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?"
MODEL_TAG = rf"^{TAG_PART}(:{TAG_PART})?$"
DEFAULT_MODEL = "imageiq-classifier:latest"

# Keys that take effect on a config-file reload; the others need a restart.
RELOADABLE = frozenset({"models", "active_model"})
# Secret values that are somebody's example, not a secret.
PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password", "pepper", "xxx", ""})
# Signature algorithms an OIDC token may use: asymmetric only (imageiq.oidc).
OidcAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
OIDC_ALGORITHMS_DEFAULT: tuple[OidcAlgorithm, ...] = ("RS256",)  # what the usual IdPs sign with
# A JWT claim name (a URL for a namespaced claim, or a dotted path into an object).
_CLAIM = r"^[!-~]{1,255}$"
# Variables of earlier releases: refused with the way forward, not silently ignored.
RETIRED = {
    "IMAGEIQ_MODEL_NAME": "IMAGEIQ_MODELS (a list of name:version tags)",
    "IMAGEIQ_MODEL_VERSION": "IMAGEIQ_MODELS (a list of name:version tags)",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEIQ_", frozen=True, extra="forbid")

    # The models to serve side by side, as registered tags "name:version" ("name" alone or
    # "name:latest" is the newest registered version). Environment: a comma-separated list
    # or a JSON array. Each has its own adaptive-batching queue.
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODEL])
    # The model a request gets when it names none: a name or name:version among `models`;
    # unset means the first one.
    active_model: str | None = Field(None, pattern=MODEL_TAG)
    # A YAML file of settings (same keys, without the prefix) that overrides the environment.
    # The service re-reads it every `reload_interval_s` seconds and applies a changed
    # `models` / `active_model` without a restart (a mounted ConfigMap, for example).
    config_file: Path | None = None
    reload_interval_s: float = Field(5.0, ge=0.0, le=3600.0)  # 0: never re-read

    # Inference placement. "auto" uses CUDA when a GPU is visible, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for the model thread; unset means one per available core.
    torch_threads: int | None = Field(None, ge=1, le=256)
    # Numeric precision of the forward pass: fp32, or autocast to bf16 (CPUs with AVX512-BF16
    # or AMX, and GPUs) or fp16 (GPUs). "auto" picks bf16 where the hardware runs it natively
    # (else fp16 on a GPU without bf16, fp32 on other CPUs). See docs/performance.md: on a
    # 2-core AVX512-BF16 node, bf16 + channels-last serves ResNet-50 about 2-3x faster than
    # fp32, with the same top-1 on the digits demo.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Channels-last memory format (faster convolutions, most of all with bf16/fp16).
    channels_last: bool = True
    # torch.compile each model at load, with frozen weights, for every power-of-two batch
    # size up to max_batch_size (a batch of another size runs as a sum of those). About a
    # minute of warm-up per ResNet-50 on 2 cores before /readyz turns ready, then 1.7x eager
    # at batch 1 and 1.2x at the best batch (docs/performance.md). Falls back to eager, with
    # a warning, where compilation fails (e.g. no C++ compiler).
    compile: bool = True

    # Process layout. Off (the default on CPU nodes): one process decodes and runs the
    # models. On (the GPU values' default): `front_workers` processes serve HTTP, auth,
    # decode and preprocessing, and hand the prepared images, through shared memory, to one
    # model process for the device, which loads, warms up and batches every model across
    # all of them (docs/architecture.md). `model_slots`: images one front may have in
    # shared memory at once (each slot holds one image of the largest served input; a
    # front with none free sends the image over the socket instead).
    # `model_socket`: the model process's Unix socket. Unset, `bentoml serve` starts the
    # model process itself at a path of its own; set, the fronts connect to one started
    # separately (`python -m imageiq.model_process`, e.g. a container of its own).
    model_process: bool = False
    front_workers: int = Field(1, ge=1, le=256)
    model_slots: int = Field(64, ge=1, le=4096)
    model_socket: Path | None = None

    # BentoML's OpenTelemetry spans (its tracing middleware) for every request. Off: the
    # middleware lets requests through untouched, which saves 0.6 core-ms per request
    # (docs/performance.md, "The request path"); turn it on with a tracing exporter in
    # BentoML's configuration (`tracing.exporter_type`).
    trace_requests: bool = False

    # Adaptive batching (continuous batching, one queue per model: an idle model runs a
    # request at once, a busy one batches what queued meanwhile): the largest batch it may
    # form (1 turns batching off), and the time a queued image may wait for its batch before
    # it is refused with 503 (load shedding). Half the request deadline: a burst of batch
    # requests queues rather than fails, and a request still has time to finish.
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_latency_ms: int = Field(30_000, ge=10, le=600_000)
    # Whole-request deadline, seconds; past it the client gets 504 "timeout".
    request_timeout_s: int = Field(60, ge=1, le=3600)
    # Requests in progress at once on /v1; more are refused with 503 "overloaded".
    max_in_flight: int = Field(64, ge=1, le=100_000)

    # Admission by cost (docs/operations.md, "Limits"). Every budget is per worker process.
    # `memory_limit_bytes`: the memory this process may use; unset, the container's
    # cgroup limit (or the machine's memory), divided among the front workers. The two
    # budgets below are sized from it when unset: request bytes in flight (a body counts
    # from its Content-Length, or as it streams, times what parsing it costs: 3x for JSON
    # base64, 2x for multipart), and decoded pixels in flight (each RGB pixel costs about
    # 16 bytes across decode, resize and the tensor). Past either budget a request gets
    # 503 "overloaded" with Retry-After; one that alone exceeds it, 413.
    memory_limit_bytes: int | None = Field(None, ge=64 * MiB)
    max_in_flight_bytes: int | None = Field(None, ge=1024)
    max_in_flight_pixels: int | None = Field(None, ge=1)
    # Requests of one API key in progress at once on one worker; more get 429.
    max_in_flight_per_key: int = Field(16, ge=1, le=100_000)
    # Seconds a request may take to send its whole body; a slower (or stalled) one gets
    # 408 "body_timeout" and its connection is closed.
    body_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    # Key checks waiting on the database at once (requests not yet authenticated); more
    # get 503 at once. Failed authentications per client address and minute, with a burst,
    # before that address gets 429 "auth_throttled" without its key being checked.
    max_unauthenticated: int = Field(32, ge=1, le=100_000)
    # Proxies whose X-Forwarded-For names the client (comma-separated addresses or CIDRs,
    # "*" for any): the Ingress controller's pods. Empty: the peer's address is the client's,
    # so no client can pick the address its failed attempts are counted against.
    trusted_proxies: str = ""
    auth_failures_per_minute: int = Field(30, ge=1, le=1_000_000)
    auth_failures_burst: int = Field(10, ge=1, le=1_000_000)
    # Images decoded and preprocessed at once (each can take hundreds of MB at the pixel
    # limit); unset means one per available core. Others wait their turn.
    decode_concurrency: int | None = Field(None, ge=1, le=256)
    # Decode large JPEGs at a reduced scale (Pillow's draft mode) when the model needs fewer
    # pixels: several times faster on camera photos. See docs/performance.md.
    jpeg_draft: bool = True

    # Input limits: bytes of one uploaded image, and pixels (width x height) read from the
    # image header before anything is decoded (decompression bombs are refused unallocated).
    max_image_bytes: int = Field(20 * MiB, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=1)
    # Images in one /v1/classify/batch request, and that request's whole body.
    max_batch_images: int = Field(32, ge=1, le=1024)
    max_batch_request_bytes: int = Field(32 * MiB, ge=1024)

    # Predictions returned when the request does not say.
    default_top_k: int = Field(5, ge=1, le=100)

    # Images in the one warm-up batch that runs before /readyz turns ready.
    warmup_batch_size: int = Field(1, ge=1, le=1024)

    # /v1/explain (imageiq.explain): Grad-CAM needs gradients, so it runs an eager fp32 copy
    # of the model on the CPU, not the serving runner. Copies kept per worker process, the
    # least recently explained dropped first; each costs the model's weights again (ResNet-50:
    # about 100 MB).
    explain_cache_models: int = Field(2, ge=1, le=16)

    # Where the embedded defaults keep their state: the SQLite database, stored images and
    # the spool of records waiting for a dependency to come back. A volume in a cluster.
    data_dir: Path = Path(".imageiq")

    # Metadata (images, predictions, labels, models, API keys, audit log): a SQLAlchemy URL,
    # e.g. postgresql://user:pass@host:5432/imageiq. Unset: SQLite at data_dir/imageiq.db.
    # Either way the schema comes from `imageiq db upgrade`; the service refuses to start
    # on a database that is not at the current migration.
    database_url: SecretStr | None = None
    # Seconds to wait for the database to connect before calling it down.
    database_timeout_s: float = Field(3.0, gt=0.0, le=60.0)

    # Prediction cache and rate-limit counters: a Redis URL (redis://host:6379/0). Unset: an
    # in-process cache and limiter (per replica). When Redis is down the service keeps
    # classifying, uncached and limited in-process, and says so in metrics and /readyz.
    redis_url: SecretStr | None = None
    # Cached predictions live this long (seconds; 0 turns the cache off); the in-process
    # cache keeps at most cache_max_entries of them.
    cache_ttl_s: int = Field(24 * 3600, ge=0, le=30 * 24 * 3600)
    cache_max_entries: int = Field(10_000, ge=1, le=10_000_000)

    # Stored images: an S3 bucket (any S3-compatible store; s3_endpoint_url for MinIO, moto,
    # ...; credentials from boto3's usual chain), under content-addressed keys
    # <s3_prefix><sha256>. Unset: files under data_dir/images.
    s3_bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_prefix: str = Field("images/", pattern=r"^([A-Za-z0-9!_.*'()/-]{0,200})$")
    # S3-compatible endpoint, for stored images and for training data referenced as
    # s3://bucket/key (AWS when unset).
    s3_endpoint_url: str | None = None
    # The model repository in the same bucket: versions published by `imageiq retrain` (or
    # `imageiq models publish`) as <s3_model_prefix><name>/<version>.bentomodel, imported
    # by a replica asked to serve a version its own store lacks. Unset bucket:
    # data_dir/models.
    s3_model_prefix: str = Field("models/", pattern=r"^([A-Za-z0-9!_.*'()/-]{0,200})$")
    # When uploaded images are kept: when the request says store=true, on every request, or
    # never (store=true is then refused with 422).
    store_images: Literal["request", "always", "never"] = "request"
    # Stored images lose their EXIF (GPS position, camera serial, ...), XMP, IPTC and text
    # metadata, losslessly (the pixels are untouched, and the id stays the sha256 of the
    # bytes the client sent) unless this is on (docs/operations.md, "Privacy").
    keep_image_metadata: bool = False

    # API keys: every /v1 endpoint needs `Authorization: Bearer <key>`. Off is for a local
    # demo only and is logged loudly at start-up.
    auth_enabled: bool = True
    # A secret mixed into every key hash (HMAC), so a copy of the database alone cannot be
    # used to test guessed keys. Changing it invalidates every key.
    api_key_pepper: SecretStr | None = None
    # How long a replica trusts a key it checked before asking the database again: a key
    # revoked elsewhere stops working within this many seconds (at once on this replica).
    auth_cache_ttl_s: float = Field(10.0, ge=0.0, le=3600.0)
    # While the database is down, a cached key past its TTL still classifies for this many
    # seconds more (0: refused like the others); the label and admin scopes are refused
    # with 503 as soon as the TTL has passed (fail closed). The trade-off: a key revoked
    # just before an outage may classify for up to auth_cache_ttl_s + this.
    auth_stale_grace_s: float = Field(300.0, ge=0.0, le=86_400.0)
    # The key the CLI's client commands (`imageiq parity`) and the load tests send.
    api_key: SecretStr | None = None
    # Requests per minute per API key (a key's own limit overrides it; 0 turns limits off),
    # and how many may come at once above that pace.
    rate_limit_per_minute: int = Field(600, ge=0, le=10_000_000)
    rate_limit_burst: int = Field(60, ge=1, le=1_000_000)

    # OpenID Connect bearer tokens, a second way in beside API keys (docs/oidc.md). Off
    # while `oidc_issuer` is unset. With it, `Authorization: Bearer <JWT>` is verified
    # against the issuer's published keys (JWKS): signature, `iss`, `aud`, `exp`, `nbf`
    # and `iat` with `oidc_leeway_s` of clock skew. The issuer: https, or http on loopback
    # (a local test IdP), exactly as its tokens' `iss` spell it. `oidc_audience`: this
    # service's identifier at the IdP (the tokens' `aud`), required with an issuer.
    # `oidc_jwks_url`: unset, the `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    oidc_issuer: str | None = None
    oidc_audience: str | None = Field(None, min_length=1, max_length=1024)
    oidc_jwks_url: str | None = None
    # The signing algorithms accepted (a token's `alg` must be one of them, and fit the
    # kind of key that signed it). Asymmetric only: an HMAC or "none" is never accepted.
    oidc_algorithms: Annotated[list[OidcAlgorithm], NoDecode] = Field(
        default_factory=lambda: list(OIDC_ALGORITHMS_DEFAULT)
    )
    oidc_leeway_s: int = Field(60, ge=0, le=300)
    # The claims read: the subject (the caller's identity: its rate limit, audit and
    # records, as `oidc:<subject>`), and the one carrying its rights, either a
    # space-separated string ("scope", "scp") or a list ("roles", "groups"); a dotted path
    # reaches into an object ("realm_access.roles", Keycloak's realm roles).
    oidc_subject_claim: str = Field("sub", pattern=_CLAIM)
    oidc_scopes_claim: str = Field("scope", pattern=_CLAIM)
    # The values of that claim that grant each ImageIQ scope (admin implies the others).
    # A token with none of them is authenticated but refused every endpoint (403).
    oidc_classify_values: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["imageiq:classify"]
    )
    oidc_label_values: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["imageiq:label"]
    )
    oidc_admin_values: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["imageiq:admin"]
    )
    # A subject's requests per minute (unset: rate_limit_per_minute; 0: unlimited).
    oidc_rate_limit_per_minute: int | None = Field(None, ge=0, le=10_000_000)
    # The issuer's keys are kept `oidc_jwks_cache_s`, then fetched again; a token signed by
    # a key not among them fetches them at once (a rotation), but never twice within
    # `oidc_jwks_min_refresh_s`, so made-up key ids cannot turn into requests to the
    # issuer. Each fetch waits at most `oidc_timeout_s`; while the issuer does not answer,
    # the keys last fetched keep verifying, and a token they cannot verify gets 503.
    oidc_jwks_cache_s: int = Field(3600, ge=60, le=7 * 86_400)
    oidc_jwks_min_refresh_s: float = Field(60.0, ge=1.0, le=3600.0)
    oidc_timeout_s: float = Field(5.0, gt=0.0, le=60.0)

    # Prediction log: records wait in a bounded queue and are written in batches by one
    # background thread, off the request path. When the database is down they are kept (in
    # memory, then spooled to data_dir/spool) and replayed when it is back.
    record_queue_size: int = Field(10_000, ge=10, le=10_000_000)
    record_batch_size: int = Field(500, ge=1, le=100_000)
    record_flush_interval_s: float = Field(0.2, gt=0.0, le=60.0)
    # Bytes of records (and the images of store=true requests) that may wait for the
    # database or the object store, in memory and in the spool (data_dir/spool: a
    # PersistentVolumeClaim in the chart, so they survive the pod). Past it, requests that
    # would add one get 503 "backlog_full" instead of being accepted. Keep it under the
    # volume's size.
    backlog_max_bytes: int = Field(1024 * MiB, ge=MiB)

    # The planes: with `metrics_port`, Prometheus metrics are served on that port (all
    # interfaces) and no longer on the API port, so the public Ingress never routes them.
    # `docs_enabled`: the OpenAPI page (/v1/docs, /v1/openapi.json).
    metrics_port: int | None = Field(None, ge=1, le=65535)
    docs_enabled: bool = True

    # The closed loop (docs/rollout.md): how often each replica applies canaries started
    # elsewhere, judges the running ones (rollback or promotion by their policy) and
    # refreshes the closed-loop gauges (labelled images per class, retrain runs) from the
    # database. 0: never (canaries are then neither routed nor judged on this replica).
    rollout_interval_s: float = Field(10.0, ge=0.0, le=3600.0)

    # Bulk jobs (POST /v1/jobs, `imageiq worker`; docs/jobs.md). Their task queue is
    # Celery's on this Redis broker (unset: redis_url); without either, /v1/jobs answers
    # 503 jobs_unavailable. `jobs_queue` is the Redis list KEDA scales the workers on.
    jobs_broker_url: SecretStr | None = None
    jobs_queue: str = Field("imageiq-jobs", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Images per task: a worker takes a chunk, answers every image in it, then acknowledges
    # it. A worker that dies mid-chunk loses nothing: the chunk is delivered again after
    # `jobs_visibility_timeout_s` (keep it above a chunk's run time, or chunks run twice:
    # harmless, the results are written once, but wasted work).
    jobs_chunk_size: int = Field(256, ge=1, le=100_000)
    jobs_visibility_timeout_s: int = Field(900, ge=5, le=7 * 86_400)
    # A chunk that fails on a dependency (database, object store) is retried this many
    # times, with exponential back-off from 2 s to 10 min, before its images fail.
    jobs_max_retries: int = Field(10, ge=0, le=100)
    # A worker's pipeline: reads from the object store at once, processes decoding (0: one
    # per four cores on a CPU node, where the model needs the cores; all cores but one with
    # a GPU), and the largest batch per forward pass: at start the worker times each
    # power of two up to it and uses the fastest (ResNet-50 on 2 CPU cores: 8; a GPU: the
    # largest).
    jobs_read_concurrency: int = Field(16, ge=1, le=1024)
    jobs_decode_processes: int = Field(0, ge=0, le=256)
    jobs_batch_size: int = Field(32, ge=1, le=4096)
    # Bounds of a submission: images per job; S3 buckets a job may read (besides
    # s3_bucket, always allowed); a manifest's size; an uploaded archive's size, members,
    # and bytes once expanded (each member is also bounded by max_image_bytes).
    jobs_max_items: int = Field(1_000_000, ge=1, le=100_000_000)
    jobs_allowed_buckets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    jobs_max_manifest_bytes: int = Field(256 * MiB, ge=1024)
    jobs_max_archive_bytes: int = Field(2048 * MiB, ge=1024)
    jobs_max_archive_members: int = Field(100_000, ge=1, le=10_000_000)
    jobs_max_archive_expanded_bytes: int = Field(16 * 1024 * MiB, ge=1024)
    # Finished jobs' results files (Parquet and CSV) go to the object store under this
    # prefix; their presigned links last this long.
    jobs_results_prefix: str = Field("jobs/", pattern=r"^([A-Za-z0-9!_.*'()/-]{1,200})$")
    jobs_results_link_ttl_s: int = Field(3600, ge=60, le=7 * 86_400)
    # Job webhooks (signed, docs/jobs.md): a callback URL that resolves to a private,
    # loopback, link-local or reserved address is refused unless one of these networks
    # (CIDRs, e.g. 10.0.0.0/8) holds it. Each attempt waits at most webhook_timeout_s; a
    # failed delivery is retried with exponential back-off (30 s, doubling, at most 10
    # minutes apart, under two thirds of jobs_visibility_timeout_s so that a retry waiting in
    # a worker is never handed to a second one) webhook_max_attempts times in all: about 2.5
    # hours with the default.
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = Field(10.0, gt=0.0, le=120.0)
    webhook_max_attempts: int = Field(20, ge=1, le=100)
    # `imageiq worker` serves its Prometheus metrics on this port (0: none).
    worker_metrics_port: int = Field(9400, ge=0, le=65535)

    # Service logs: one JSON object per line (for log shippers), or plain text.
    log_format: Literal["json", "text"] = "json"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list):
            value = [v.strip() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        import re

        if not value:
            raise ValueError("at least one model must be served")
        for tag in value:
            if not re.match(MODEL_TAG, tag):
                raise ValueError(f"{tag!r} is not a model tag (name or name:version)")
        tags = [normalize_tag(t) for t in value]
        if len(set(tags)) != len(tags):
            raise ValueError(f"a model is listed twice: {value}")
        return tags

    @model_validator(mode="before")
    @classmethod
    def _refuse_retired(cls, data: Any) -> Any:
        found = sorted(name for name in RETIRED if name in os.environ)
        if found:
            raise ValueError(
                "; ".join(f"{name} is no longer read: use {RETIRED[name]}" for name in found)
            )
        return data

    @model_validator(mode="after")
    def _check_active(self) -> Settings:
        if self.active_model is not None and not any(
            tag_matches(self.active_model, t) for t in self.models
        ):
            raise ValueError(
                f"active_model {self.active_model!r} is not one of the served models {self.models}"
            )
        return self

    @field_validator(
        "jobs_allowed_buckets",
        "webhook_allowed_networks",
        "oidc_algorithms",
        "oidc_classify_values",
        "oidc_label_values",
        "oidc_admin_values",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list):
            value = [v.strip() for v in value if not isinstance(v, str) or v.strip()]
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as e:
                raise ValueError(f"{network!r} is not a network (CIDR, e.g. 10.0.0.0/8)") from e
        return value

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.oidc_issuer is None:
            extra = [n for n in ("oidc_audience", "oidc_jwks_url") if getattr(self, n)]
            if extra:
                raise ValueError(f"{' and '.join(extra)} set without oidc_issuer (OIDC is off)")
            return self
        _check_endpoint("oidc_issuer", self.oidc_issuer)
        if self.oidc_jwks_url is not None:
            _check_endpoint("oidc_jwks_url", self.oidc_jwks_url)
        if not self.oidc_audience:
            raise ValueError(
                "oidc_audience is required with oidc_issuer: this service's identifier at "
                "the identity provider, which its tokens carry in `aud`"
            )
        if not self.oidc_algorithms:
            raise ValueError("oidc_algorithms must name at least one algorithm")
        return self

    @field_validator("api_key_pepper")
    @classmethod
    def _check_pepper(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret = value.get_secret_value()
            if secret.lower() in PLACEHOLDERS or len(secret) < 16:
                raise ValueError("api_key_pepper must be a random secret of 16+ characters")
        return value

    @property
    def broker_url(self) -> str | None:
        """The jobs' Celery broker: jobs_broker_url, else redis_url; None: no jobs."""
        url = self.jobs_broker_url or self.redis_url
        return url.get_secret_value() if url is not None else None

    @property
    def database(self) -> str:
        """The database URL, the embedded SQLite file when none is set."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'imageiq.db').resolve()}"

    @property
    def pepper(self) -> bytes:
        return self.api_key_pepper.get_secret_value().encode() if self.api_key_pepper else b""

    @property
    def model_tag(self) -> str:
        """The active model's tag (what a request that names no model gets)."""
        if self.active_model is None:
            return self.models[0]
        return next(t for t in self.models if tag_matches(self.active_model, t))

    @property
    def model_name(self) -> str:
        return self.model_tag.split(":", 1)[0]

    @property
    def cpu_count(self) -> int:
        """Cores this process may run on (its affinity mask, not the host's total)."""
        return len(os.sched_getaffinity(0))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _ConfigFile(settings_cls, init_settings, env_settings), env_settings)


def _check_endpoint(name: str, url: str) -> None:
    """An issuer or JWKS URL: https, or http to a loopback address (a test IdP)."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (a malformed port raises)
    except ValueError as e:
        raise ValueError(f"{name} {url!r} is not a URL") from e
    if not host or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{name} {url!r} must be a plain https://host[/path] URL")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{name} {url!r} must be https (http only on a loopback address)")


def normalize_tag(tag: str) -> str:
    """``name`` -> ``name:latest``."""
    return tag if ":" in tag else f"{tag}:latest"


def tag_matches(ref: str, tag: str) -> bool:
    """Whether ``ref`` (a name, or name:version) designates ``tag`` (name:version)."""
    return ref == tag if ":" in ref else tag.split(":", 1)[0] == ref


class _ConfigFile(PydanticBaseSettingsSource):
    """The YAML file named by ``config_file`` (from the constructor or the environment)."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init: PydanticBaseSettingsSource,
        env: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._path = init().get("config_file") or env().get("config_file")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ below reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        if not self._path:
            return {}
        path = Path(self._path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigurationError(f"cannot read config file {path}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigurationError(f"config file {path} is not valid YAML: {e}") from e
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigurationError(f"config file {path} must be a mapping of setting: value")
        return {str(k): v for k, v in data.items()}


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment and the config file (``overrides`` first): the
    factory every entry point calls once. An invalid value is a :class:`ConfigurationError`
    naming each variable and what is wrong with it."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for problem in e.errors():
            name = "_".join(str(p) for p in problem["loc"]).upper()
            problems.append(f"{'IMAGEIQ_' + name if name else 'settings'}: {problem['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from e
