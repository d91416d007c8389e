"""The core's results as response bodies: :class:`imageiq.classify.ImageResult` to the
fields of :class:`bentos.schemas.PredictionOut`, and a failed image to its ``error``."""

from __future__ import annotations

from typing import Any

from bentos.schemas import ItemError
from imageiq import errors
from imageiq.classify import Classified, ImageResult
from imageiq.inference import ScoredLabel


def prediction_fields(classified: Classified) -> dict[str, Any]:
    """What ``/v1/classify`` answers about one image (without ``model``)."""
    image = classified.image
    image_out: dict[str, Any] = {
        "sha256": image.sha256,
        "width": image.width,
        "height": image.height,
        "format": image.format,
        "bytes": image.bytes,
    }
    if classified.stored is not None:
        image_out["id"], image_out["stored"] = image.sha256, classified.stored
    t = classified.timing_ms
    return {
        "predictions": [_scored(s) for s in classified.labels],
        "attributes": {head: _scored(s) for head, s in classified.attributes.items()},
        "image": image_out,
        "batch_size": classified.batch_size,
        "cached": classified.cached,
        "timing_ms": {
            "decode": t.decode,
            "preprocess": t.preprocess,
            "queue": t.queue,
            "inference": t.inference,
            "total": t.total,
        },
    }


def batch_item(index: int, filename: str | None, result: ImageResult) -> dict[str, Any]:
    """One result of ``/v1/classify/batch``: the prediction, or the error this image would
    have had on ``/v1/classify``."""
    if result.error is not None:
        return {"index": index, "filename": filename, "error": item_error(result.error)}
    assert result.classified is not None
    return {"index": index, "filename": filename, **prediction_fields(result.classified)}


def item_error(error: errors.ImageIQError) -> ItemError:
    return ItemError(status=error.status, code=error.code, message=error.message)


def _scored(s: ScoredLabel) -> dict[str, Any]:
    return {"label": s.label, "score": s.score}
