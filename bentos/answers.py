"""The core's results as response bodies: :class:`imageiq.classify.ImageResult` to the
fields of :class:`bentos.schemas.PredictionOut`, and a failed image to its ``error``."""

from __future__ import annotations

import dataclasses
from typing import Any

from bentos.schemas import ItemError
from imageiq import errors
from imageiq.classify import Classified, ImageResult


def prediction_fields(classified: Classified) -> dict[str, Any]:
    """What ``/v1/classify`` answers about one image (without ``model``)."""
    image: dict[str, Any] = dataclasses.asdict(classified.image)
    if classified.stored is not None:
        image["id"], image["stored"] = classified.image.sha256, classified.stored
    return {
        "predictions": [s.as_dict() for s in classified.labels],
        "attributes": {head: s.as_dict() for head, s in classified.attributes.items()},
        "image": image,
        "batch_size": classified.batch_size,
        "cached": classified.cached,
        "timing_ms": dataclasses.asdict(classified.timing_ms),
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
