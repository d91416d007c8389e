"""The API's calls as data: what to send and how to read the answer, without sending it.

:class:`~imageiq.client.sync_client.Client` and
:class:`~imageiq.client.async_client.AsyncClient` execute the same :class:`Call` objects
with their own I/O, so a path, an option or a parser is written once for both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from imageiq.client import responses as r
from imageiq.client.uploads import ImageSource

T = TypeVar("T")
Files = list[tuple[str, tuple[str, bytes, str]]]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    # Multipart: built when sent (a path's bytes are read then, once per attempt).
    files: Callable[[], Files] | None = None
    data: dict[str, str] | None = None
    # A raw body read from this file at each attempt (job archives).
    upload: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # May be sent again after it may have reached the server (see retrying).
    idempotent: bool = False


def _model(cls: type[T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        return cls.model_validate(response.json())  # type: ignore[attr-defined]

    return parse


def _options(
    *, top_k: int | None, min_confidence: float | None, model: str | None, store: bool | None
) -> dict[str, str]:
    """Classify options as form fields; those not given are left to the server's defaults."""
    given = {"top_k": top_k, "min_confidence": min_confidence, "model": model, "store": store}
    return {
        k: (("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in given.items()
        if v is not None
    }


def classify(source: ImageSource, **options: Any) -> Call[r.Classification]:
    return Call(
        "POST",
        "/v1/classify",
        _model(r.Classification),
        files=lambda: [("image", (source.filename, source.read(), "application/octet-stream"))],
        data=_options(**options),
        idempotent=True,
    )


def classify_chunk(
    sources: Sequence[ImageSource], indices: Sequence[int], **options: Any
) -> Call[list[r.BatchItem]]:
    """One batch request for ``sources[i] for i in indices``; its items carry the input's
    indices (not the request's) and the model that answered."""

    def files() -> Files:
        return [
            ("images", (sources[i].filename, sources[i].read(), "application/octet-stream"))
            for i in indices
        ]

    def parse(response: httpx.Response) -> list[r.BatchItem]:
        body = response.json()
        items = []
        for raw in body["results"]:
            item = r.BatchItem.model_validate({**raw, "model": body.get("model")})
            item.index = indices[raw["index"]]
            items.append(item)
        return items

    return Call(
        "POST",
        "/v1/classify/batch",
        parse,
        files=files,
        data=_options(**options),
        idempotent=True,
    )


def categories(*, model: str | None) -> Call[r.Categories]:
    params = {"model": model} if model else None
    return Call("GET", "/v1/categories", _model(r.Categories), params=params, idempotent=True)


def models() -> Call[r.Models]:
    return Call("GET", "/v1/models", _model(r.Models), idempotent=True)


def whoami() -> Call[r.Whoami]:
    return Call("GET", "/v1/auth/whoami", _model(r.Whoami), idempotent=True)


def feedback(
    image_id: str,
    *,
    label: str | None,
    attributes: dict[str, str] | None,
    source: str,
    new_label: bool,
) -> Call[r.Label]:
    body: dict[str, Any] = {"source": source, "new_label": new_label}
    if label is not None:
        body["label"] = label
    if attributes:
        body["attributes"] = attributes
    return Call("POST", f"/v1/images/{image_id}/labels", _model(r.Label), json=body)


def get_image(image_id: str) -> Call[r.ImageDetail]:
    return Call("GET", f"/v1/images/{image_id}", _model(r.ImageDetail), idempotent=True)


def image_content(image_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/images/{image_id}/content", lambda x: x.content, idempotent=True)


def list_images(**filters: Any) -> Call[r.ImagePage]:
    params = {k: v for k, v in filters.items() if v is not None}
    return Call("GET", "/v1/images", _model(r.ImagePage), params=params, idempotent=True)


def delete_image(image_id: str) -> Call[r.Deleted]:
    return Call("DELETE", f"/v1/admin/images/{image_id}", _model(r.Deleted))


def submit_job(
    *,
    s3_prefix: str | None,
    manifest: str | None,
    image_ids: Sequence[str] | None,
    archive: str | Path | None,
    model: str | None,
    top_k: int | None,
    min_confidence: float | None,
    callback_url: str | None,
    progress_webhooks: bool,
) -> Call[r.JobCreated]:
    given = [s for s in (s3_prefix, manifest, image_ids, archive) if s is not None]
    if len(given) != 1:
        raise ValueError("Give exactly one of s3_prefix, manifest, image_ids, archive.")
    options: dict[str, Any] = {
        k: v
        for k, v in {
            "model": model,
            "top_k": top_k,
            "min_confidence": min_confidence,
            "callback_url": callback_url,
        }.items()
        if v is not None
    }
    if progress_webhooks:
        options["progress_webhooks"] = True
    parse = _model(r.JobCreated)
    if archive is not None:
        path = Path(archive)
        return Call(
            "POST",
            "/v1/jobs",
            parse,
            params={**options, "filename": path.name},
            upload=path,
            headers={"Content-Type": _archive_type(path)},
        )
    if s3_prefix is not None:
        source: dict[str, Any] = {"s3_prefix": s3_prefix}
    elif manifest is not None:
        source = {"manifest": manifest}
    else:
        source = {"image_ids": list(image_ids or [])}
    return Call("POST", "/v1/jobs", parse, json={**options, "source": source})


def _archive_type(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "application/zip"
    if name.endswith((".tar.gz", ".tgz", ".gz")):
        return "application/gzip"
    return "application/x-tar"


def get_job(job_id: str) -> Call[r.Job]:
    return Call("GET", f"/v1/jobs/{job_id}", _model(r.Job), idempotent=True)


def list_jobs(*, limit: int) -> Call[list[r.Job]]:
    def parse(response: httpx.Response) -> list[r.Job]:
        return [r.Job.model_validate(j) for j in response.json()["jobs"]]

    return Call("GET", "/v1/jobs", parse, params={"limit": limit}, idempotent=True)


def job_results(job_id: str) -> Call[list[r.JobResultLine]]:
    def parse(response: httpx.Response) -> list[r.JobResultLine]:
        return [
            r.JobResultLine.model_validate(json.loads(line))
            for line in response.text.splitlines()
            if line.strip()
        ]

    return Call("GET", f"/v1/jobs/{job_id}/results", parse, idempotent=True)


def cancel_job(job_id: str) -> Call[r.Job]:
    return Call("DELETE", f"/v1/jobs/{job_id}", _model(r.Job))
