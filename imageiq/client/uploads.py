"""What a caller may hand the SDK as an image, and how many go in one batch request.

An image is a path (``str`` or ``os.PathLike``), ``bytes``, a binary file object or a PIL
image (sent as PNG; PIL is imported only when one is given). A path is read when its
request is sent, not before, so a batch of thousands of files holds at most the chunks in
flight in memory.

Chunks respect two server limits, neither of which the API publishes up front: the images
per request (``IMAGEIQ_MAX_BATCH_IMAGES``, 32 by default, or a rate-limited key's burst)
and the body size (``IMAGEIQ_MAX_BATCH_REQUEST_BYTES``, 32 MiB). The client starts from
the defaults and learns the real values from the 413 that refuses a chunk: ``details``
carries ``max_images`` (``too_many_images``) or ``max_bytes`` (``payload_too_large``). The
refused chunk is split again and sent; later chunks are planned with what was learned.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union, cast

from imageiq.client import responses as r
from imageiq.client.api_errors import APIError, ImageIQError

OnResult = Callable[[r.BatchItem], None]
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Any]
DEFAULT_MAX_IMAGES = 32
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# A multipart part's headers and boundary, with room for a long file name.
PART_OVERHEAD = 512
# Never plan a body this close to the limit: the options' parts and the closing boundary.
BODY_SLACK = 16 * 1024


@dataclass
class ImageSource:
    """One image to send: its name in the request, its size (to plan chunks) and how to get
    its bytes."""

    filename: str
    size: int
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


def source_of(image: ImageInput, *, index: int = 0) -> ImageSource:
    """The :class:`ImageSource` of anything :data:`ImageInput` allows; TypeError otherwise.
    A path is only looked at (its size), not read."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(os.fspath(image))
        return ImageSource(filename=path.name, size=path.stat().st_size, path=path)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return ImageSource(filename=f"image-{index}", size=len(data), data=data)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("A file object must be opened in binary mode ('rb').")
        name = Path(str(getattr(image, "name", "") or f"image-{index}")).name
        return ImageSource(filename=name, size=len(data), data=data)
    if _is_pil_image(image):
        buffer = io.BytesIO()
        cast(Any, image).save(buffer, format="PNG")
        data = buffer.getvalue()
        return ImageSource(filename=f"image-{index}.png", size=len(data), data=data)
    raise TypeError(
        f"Cannot send a {type(image).__name__} as an image: give a path, bytes, a binary "
        "file object or a PIL image."
    )


def _is_pil_image(value: Any) -> bool:
    """Without importing PIL unless the value's class comes from it."""
    if not type(value).__module__.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(value, Image.Image)


class BatchLimits:
    """The server's per-request limits as far as this client knows them; shared by the
    chunks of every batch a client sends (and its threads)."""

    def __init__(
        self, *, max_images: int = DEFAULT_MAX_IMAGES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_images = max_images
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def plan(self, sources: Sequence[ImageSource], indices: Sequence[int]) -> list[list[int]]:
        """``indices`` (into ``sources``) as consecutive chunks within both limits; an image
        alone over the byte limit gets a chunk of its own (the server answers its error)."""
        with self._lock:
            most_images, most_bytes = self.max_images, self.max_bytes - BODY_SLACK
        chunks: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i in indices:
            cost = sources[i].size + PART_OVERHEAD
            if current and (len(current) >= most_images or size + cost > most_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(i)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    def learn(self, error: APIError, *, images: int) -> bool:
        """Whether ``error`` (the answer to a chunk of ``images``) taught a lower limit, so
        the chunk is worth splitting and sending again."""
        if error.status != 413 or images <= 1:
            return False
        details = error.details
        with self._lock:
            if error.code == "too_many_images" and _positive(details.get("max_images")):
                new = min(int(details["max_images"]), images - 1)
                self.max_images = min(self.max_images, new)
                return True
            if error.code == "payload_too_large" and _positive(details.get("max_bytes")):
                self.max_bytes = min(self.max_bytes, int(details["max_bytes"]))
                return True
        return False


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class BatchRun:
    """The bookkeeping of one ``classify_batch``, whatever sends its chunks: the sources,
    the items answered so far (by input index), what a refused or failed chunk becomes."""

    def __init__(self, images: Sequence[ImageInput], *, on_result: OnResult | None) -> None:
        self.on_result = on_result
        self.items: dict[int, r.BatchItem] = {}
        self.requests = 0
        self._lock = threading.Lock()
        self.sources: list[ImageSource] = []
        self.readable: list[int] = []
        for i, image in enumerate(images):
            try:
                self.sources.append(source_of(image, index=i))
                self.readable.append(i)
            except OSError as e:
                self.sources.append(ImageSource(filename=_name(image, i), size=0))
                self.done([_unreadable(i, self.sources[i].filename, e)])

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def resplit(
        self, error: APIError, indices: list[int], limits: BatchLimits
    ) -> list[list[int]] | None:
        """The chunk split again when ``error`` taught a lower limit (halved when planning
        alone does not split it: the server counts bytes its own way), else None."""
        if not limits.learn(error, images=len(indices)):
            return None
        chunks = limits.plan(self.sources, indices)
        if len(chunks) > 1:
            return chunks
        half = len(indices) // 2
        return [indices[:half], indices[half:]]

    def failed(self, error: Exception, indices: list[int]) -> list[r.BatchItem]:
        """Each image of a chunk that got no answer (its retries spent, a file gone) gets
        the error, so the other chunks' results stand. Errors every chunk would get alike
        (the key, the options, the model) are raised instead."""
        if isinstance(error, OSError):
            return [_unreadable(i, self.sources[i].filename, error) for i in indices]
        assert isinstance(error, ImageIQError)
        if isinstance(error, APIError) and error.status in FATAL_FOR_BATCH:
            raise error
        item_error = r.ItemError(status=error.status, code=error.code, message=error.message)
        return [
            r.BatchItem(index=i, filename=self.sources[i].filename, error=item_error)
            for i in indices
        ]

    def done(self, items: list[r.BatchItem]) -> None:
        with self._lock:
            self.items.update((item.index, item) for item in items)
        if self.on_result is not None:
            for item in items:
                self.on_result(item)

    def result(self) -> r.BatchResult:
        results = [self.items[i] for i in range(len(self.sources))]
        failed = sum(1 for item in results if item.error is not None)
        return r.BatchResult(
            results=results, succeeded=len(results) - failed, failed=failed, requests=self.requests
        )


# Refusals that concern the whole request, not its images: every chunk would get them.
FATAL_FOR_BATCH = frozenset({400, 401, 403, 404, 405, 415, 422})


def _name(image: Any, index: int) -> str:
    try:
        return Path(image).name
    except TypeError:
        return f"image-{index}"


def _unreadable(index: int, filename: str, error: OSError) -> r.BatchItem:
    return r.BatchItem(
        index=index,
        filename=filename,
        error=r.ItemError(
            status=None,
            code="unreadable_file",
            message=f"Cannot read the file: {error.strerror or error}",
        ),
    )
