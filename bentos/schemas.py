"""Request and response bodies of the public API, with the examples the OpenAPI page shows."""

from __future__ import annotations

import base64
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field


class ScoredLabelOut(BaseModel):
    label: str = Field(description="Class label.", examples=["7"])
    score: float = Field(ge=0.0, le=1.0, description="Softmax probability.", examples=[0.98])


class ModelRefOut(BaseModel):
    name: str = Field(examples=["imageiq-classifier"])
    version: str = Field(examples=["r3vqbbdbrgsuasc6"])


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "imageiq-classifier", "version": "r3vqbbdbrgsuasc6"},
                    "predictions": [
                        {"label": "7", "score": 0.981},
                        {"label": "1", "score": 0.011},
                        {"label": "9", "score": 0.004},
                    ],
                }
            ]
        },
    )

    model: ModelRefOut
    predictions: list[ScoredLabelOut] = Field(description="Best first.")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable, machine-readable.", examples=["unsupported_image_format"]
    )
    message: str = Field(examples=["The upload is not an image in a supported format."])
    request_id: str = Field(examples=["5f0c6a1e9b7d4c2f8e3a1b0c9d8e7f6a"])
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class EncodedTensor(BaseModel):
    """A preprocessed image: uint8 CHW pixels, base64. The body of the batching endpoint."""

    shape: tuple[int, int, int]
    data: str

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> EncodedTensor:
        raw = tensor.to(torch.uint8).contiguous().numpy().tobytes()
        return cls(shape=tuple(tensor.shape), data=base64.b64encode(raw).decode("ascii"))

    def to_tensor(self, expected: tuple[int, int, int]) -> torch.Tensor:
        if self.shape != expected:
            raise ValueError(f"tensor shape {list(self.shape)} != model input {list(expected)}")
        raw = base64.b64decode(self.data, validate=True)
        if len(raw) != expected[0] * expected[1] * expected[2]:
            raise ValueError(f"{len(raw)} bytes do not fill shape {list(expected)}")
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(*expected)


class InferResult(BaseModel):
    """Probabilities per head for one tensor, or why that tensor was refused."""

    probabilities: dict[str, list[float]] | None = None
    error: str | None = None
