"""The one settings object (environment variables prefixed ``IMAGEIQ_``).

It is built once at each entry point (the CLI's ``main``, the BentoML service module) and
passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

# BentoML tag rules: lowercase letters, digits, '-', '_' and '.', 63 characters at most.
TAG_PART = r"^[a-z0-9]([a-z0-9._-]{0,62})$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEIQ_", frozen=True)

    # Which registered model to serve: a name in the BentoML model store and a version,
    # where "latest" is the most recently registered one.
    model_name: str = Field("imageiq-classifier", pattern=TAG_PART)
    model_version: str = Field("latest", pattern=TAG_PART)

    # Inference placement. "auto" uses CUDA when a GPU is visible, else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for the model thread; unset means one per available core.
    torch_threads: int | None = Field(None, ge=1, le=256)

    # Adaptive batching (BentoML's dispatcher): the largest batch it may form, and the
    # latency budget a queued request may spend before it is refused with 503.
    max_batch_size: int = Field(16, ge=2, le=1024)
    max_latency_ms: int = Field(5000, ge=10, le=600_000)
    # Whole-request deadline, seconds; past it the client gets 504 "timeout".
    request_timeout_s: int = Field(60, ge=1, le=3600)
    # Requests in progress at once on /v1; more are refused with 503 "overloaded".
    max_in_flight: int = Field(64, ge=1, le=100_000)
    # Images decoded and preprocessed at once (each can take hundreds of MB at the pixel
    # limit); unset means one per available core. Others wait their turn.
    decode_concurrency: int | None = Field(None, ge=1, le=256)

    # Input limits: bytes of one uploaded image, and pixels (width x height) read from the
    # image header before anything is decoded (decompression bombs are refused unallocated).
    max_image_bytes: int = Field(20 * MiB, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=1)

    # Predictions returned when the request does not say.
    default_top_k: int = Field(5, ge=1, le=100)

    # Images in the one warm-up batch that runs before /readyz turns ready.
    warmup_batch_size: int = Field(1, ge=1, le=1024)

    @property
    def model_tag(self) -> str:
        return f"{self.model_name}:{self.model_version}"

    @property
    def cpu_count(self) -> int:
        """Cores this process may run on (its affinity mask, not the host's total)."""
        return len(os.sched_getaffinity(0))
