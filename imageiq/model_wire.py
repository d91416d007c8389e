"""What the front processes and the model process say to each other (``IMAGEIQ_MODEL_PROCESS``).

One Unix stream socket per front, in a directory only this user can open; each message is a
4-byte length and a pickled tuple (both ends are this service's own processes, started
together). Prepared images do not travel on the socket: each front owns one shared-memory
segment of fixed-size slots, one image per slot, and names the slots a batch uses; an image
that finds no free slot, or is larger than a slot, travels inline instead.

Front -> model process:
    ("hello", shm_name, slot_bytes, slots)
    ("load", id, tag, InferenceOptions, warmup_batch_size)
    ("run", id, tag, [Image, ...])
    ("release", tag)
Model process -> front:
    ("loaded", id, state, error)
    ("ran", id, [Answer, ...])
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

_LENGTH = struct.Struct("!I")
# Far above any real message (an inline image is at most a few MB), far below memory.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Image:
    """One prepared image (uint8, ``shape``): in shared-memory slot ``slot``, or ``data``."""

    shape: tuple[int, ...]
    slot: int = -1
    data: bytes | None = None


@dataclass(frozen=True)
class Answer:
    """One image's row per head (float32 [1, C]) and the batch it ran in; or, with
    ``error_code``, why it did not run (``overloaded``, ``model_not_ready``, ``failed``)."""

    probabilities: dict[str, np.ndarray] | None
    batch_size: int = 0
    inference_s: float = 0.0
    error_code: str | None = None
    error: str | None = None


def encode(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; ``asyncio.IncompleteReadError`` when the peer has gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_MESSAGE_BYTES:
        raise ConnectionError(f"message of {length} bytes: not from an ImageIQ peer")
    message = pickle.loads(await reader.readexactly(length))
    if not isinstance(message, tuple) or not message:
        raise ConnectionError("malformed message")
    return message
