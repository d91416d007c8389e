"""The v2 protocol's answers, as its OpenAPI document declares them (bentos.v2_routes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class V2Error(BaseModel):
    """The protocol's error: its message in ``error``, ImageIQ's code and request id beside."""

    error: str = Field(description="What went wrong (the protocol's field).")
    code: str = Field(description="A stable, machine-readable code (as /v1's).")
    request_id: str
    details: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OutputTensor(BaseModel):
    name: str
    datatype: str = Field(description="FP32 probabilities, or BYTES with classification.")
    shape: list[int]
    data: list[Any] | None = Field(None, description="Row-major; absent when binary.")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when binary.")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]
