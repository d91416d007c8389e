"""The records the service writes to the metadata database through the recorder, and their
spool-file form (JSON lines; image bytes in base64) for when the database is away."""

from __future__ import annotations

import base64
import builtins
import json
import os
import uuid
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class PredictionRecord:
    image_sha256: str
    model_name: str
    model_version: str
    label: str
    score: float
    top_k: list[dict[str, Any]]
    attributes: dict[str, Any]
    latency_ms: float
    cached: bool = False
    api_key_id: str | None = None
    request_id: str | None = None  # the server's id of the request
    client_request_id: str | None = None  # the X-Request-ID the client sent, if any
    created_at: datetime = field(default_factory=utcnow)
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def sha256(self) -> str:
        return self.image_sha256


@dataclass
class ImageRecord:
    """A stored image's row; ``data`` is set while the object may not be in the store yet."""

    sha256: str
    storage_key: str
    content_type: str
    bytes: int
    width: int
    height: int
    uploaded_by: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    data: builtins.bytes | None = None


Record = PredictionRecord | ImageRecord


def as_row(record: Record) -> dict[str, Any]:
    """The record's database row: its fields, less the image bytes still to upload."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name != "data"}


def encode(record: Record) -> dict[str, Any]:
    data = {f.name: getattr(record, f.name) for f in fields(record)}
    data["created_at"] = record.created_at.isoformat()
    if isinstance(record, PredictionRecord):
        data["id"] = str(record.id)
        return {"kind": "prediction", **data}
    if record.data is not None:
        data["data"] = base64.b64encode(record.data).decode()
    return {"kind": "image", **data}


def decode(data: dict[str, Any]) -> Record:
    kind = data.pop("kind")
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    if kind == "prediction":
        data["id"] = uuid.UUID(data["id"])
        return PredictionRecord(**data)
    if data.get("data") is not None:
        data["data"] = base64.b64decode(data["data"])
    return ImageRecord(**data)


def read_spool(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as f:
        return [decode(json.loads(line)) for line in f if line.strip()]


def write_spool(path: Path, records: list[Record]) -> None:
    """Write (or with no records, remove) a spool file atomically and durably."""
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(encode(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
