"""``POST /v1/explain``: a Grad-CAM heat map of one image, for the class the model chose (or
the one asked for), from one call of the core (:class:`imageiq.explain.Explainer`).

The image is read as ``/v1/classify`` reads its one image (:mod:`bentos.inputs`: multipart
``image`` or JSON ``image_b64``, the same limits and errors); the options are ``model``,
``head`` and ``label`` instead of classify's. The key needs the ``classify`` scope, and an
explanation costs one against its rate limit, as a classification does.
"""

from __future__ import annotations

import base64
import time
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from bentos.auth import require
from bentos.http import note
from bentos.inputs import (
    JSON,
    Limits,
    Upload,
    _content_kind,
    _decoded,
    _from_b64,
    _from_file,
    _json,
    _multipart,
    _validated,
)
from bentos.openapi import ADMITTED, BODY, IMAGE_TYPES, error_responses, inline_schema
from bentos.schemas import EXAMPLE_PNG_B64, ModelRefOut
from bentos.state import state
from imageiq import errors
from imageiq.architectures import MAIN_HEAD
from imageiq.classify import count_rejected
from imageiq.explain import MAX_GRID_SIDE, METHOD, Explainer, Explanation, check_target
from imageiq.keys import Principal
from imageiq.settings import MODEL_TAG

router = APIRouter(responses=error_responses(*ADMITTED))
P = TypeVar("P", bound="ExplainParams")
ENDPOINT = "/v1/explain"
PNG = "image/png"


# --- request and response bodies ------------------------------------------------------------
class ExplainParams(BaseModel):
    """Options of /v1/explain (form fields, JSON keys or query)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        None,
        pattern=MODEL_TAG,
        description="A served model: name, name:version or name:latest (default: the active one).",
        examples=["imageiq-classifier"],
    )
    head: str = Field(
        MAIN_HEAD,
        min_length=1,
        max_length=64,
        description="The head to explain: 'label' (the classes) or an attribute head.",
        examples=["label", "shiny"],
    )
    label: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The value of the head to explain (default: the one the model scores best).",
        examples=["7"],
    )


class ExplainJSON(ExplainParams):
    """/v1/explain as JSON."""

    image_b64: str = Field(
        description="The image file, base64 (standard or URL-safe; a data: URL is accepted).",
        examples=[EXAMPLE_PNG_B64],
    )


class TargetOut(BaseModel):
    label: str = Field(description="The value of the head explained.", examples=["7"])
    score: float = Field(
        ge=0.0, le=1.0, description="Its softmax probability, as /v1/classify scores it."
    )


class RegionOut(BaseModel):
    left: int
    top: int
    width: int
    height: int


class HeatmapOut(BaseModel):
    width: int = Field(description="Of the PNG: the image's aspect ratio, at most 512 a side.")
    height: int
    png: str = Field(
        description="Base64 RGBA PNG to draw over the image: a colour map (jet), its opacity "
        "rising with the value (transparent where the map is 0)."
    )
    grid: list[list[float]] = Field(
        description=f"The map itself, rows of values 0..1 over the whole image, at most "
        f"{MAX_GRID_SIDE} a side."
    )
    region: RegionOut = Field(
        description="The centre crop the model saw, in image pixels; the map is 0 outside it."
    )


class ExplainResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRefOut
    head: str = Field(examples=["label"])
    target: TargetOut
    method: str = Field(description="How the map was made.", examples=[METHOD])
    layer: str = Field(
        description="The convolutional block explained.", examples=["backbone.layer4"]
    )
    heatmap: HeatmapOut
    timing_ms: float = Field(description="From the request's arrival to the answer, ms.")


# --- the endpoint ---------------------------------------------------------------------------
_ERRORS = error_responses(
    403,
    404,
    413,
    415,
    503,
    *BODY,
    s400="Malformed multipart or JSON, or an empty image.",
    s403="The API key lacks the classify scope.",
    s404="The model asked for is not served.",
    s413="The body, or the image (bytes or pixels), is over its limit.",
    s415="Not multipart/form-data or JSON, or not an image in a supported format.",
    s422="Missing image, unknown head (unknown_head) or label (unknown_label), invalid "
    "option or base64, or corrupt image data.",
    s503="A model not ready yet, or explanations are overloaded (see Retry-After).",
)


async def query_options(
    model: str | None = Query(
        None,
        pattern=MODEL_TAG,
        description="A served model: name, name:version or name:latest (default: the active one).",
    ),
    head: str | None = Query(
        None, min_length=1, max_length=64, description="The head to explain (default: label)."
    ),
    label: str | None = Query(
        None, min_length=1, max_length=256, description="The value of the head to explain."
    ),
) -> None:
    """The options explain takes in the query string, declared and checked here
    (:func:`read_explain` reads them with the body; a field or key of the same name wins)."""


def _openapi() -> dict[str, Any]:
    options = ExplainParams.model_json_schema()["properties"]
    multipart = {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "binary"}, **options},
        "required": ["image"],
        "additionalProperties": False,
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": multipart,
                    "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
                },
                "application/json": {"schema": inline_schema(ExplainJSON)},
            },
        }
    }


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={
        200: {
            "content": {
                PNG: {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "The explanation; with `Accept: image/png`, the overlay PNG itself "
            "(headers X-Explain-Label, percent-encoded, and X-Explain-Score).",
        },
        **_ERRORS,
    },
    summary="Explain one image's prediction (Grad-CAM heat map)",
    openapi_extra=_openapi(),
    dependencies=[Depends(query_options)],
)
async def explain(
    request: Request, principal: Principal = Depends(require("classify"))
) -> ExplainResponse | Response:
    """Where the image made the model choose its class (or ``label``, a value of ``head``):
    a Grad-CAM heat map, as a PNG to overlay on the image and as a grid of values. Multipart
    field ``image``, or JSON ``image_b64``; options ``model``, ``head``, ``label``."""
    started = time.perf_counter()
    s = state(request)
    try:
        params, upload = await read_explain(request, s.limits)
    except errors.ImageIQError as e:
        count_rejected(ENDPOINT, e)
        raise
    served = s.pool.resolve(params.model)
    note(request.scope, model=served.tag)
    check_target(served.model, head=params.head, label=params.label)  # before any work
    with served.use():
        try:
            explanation = await _explainer(request).explain(
                served.model, upload.data, head=params.head, label=params.label
            )
        except errors.ImageIQError as e:
            count_rejected(ENDPOINT, e)
            raise
    if _wants_png(request.headers.get("accept", "")):
        return Response(
            explanation.png,
            media_type=PNG,
            headers={
                "X-Explain-Label": quote(explanation.label, safe=""),
                "X-Explain-Score": f"{explanation.score:.6f}",
                "X-Explain-Head": quote(explanation.head, safe=""),
                "X-Explain-Model": served.tag,
            },
        )
    return _answer(served.model.name, served.model.version, explanation, started=started)


def _answer(name: str, version: str, e: Explanation, *, started: float) -> ExplainResponse:
    left, top, width, height = e.region
    return ExplainResponse.model_validate(
        {
            "model": {"name": name, "version": version},
            "head": e.head,
            "target": {"label": e.label, "score": e.score},
            "method": METHOD,
            "layer": e.layer,
            "heatmap": {
                "width": e.width,
                "height": e.height,
                "png": base64.b64encode(e.png).decode("ascii"),
                "grid": e.grid,
                "region": {"left": left, "top": top, "width": width, "height": height},
            },
            "timing_ms": round((time.perf_counter() - started) * 1000, 3),
        }
    )


def _explainer(request: Request) -> Explainer:
    """The process's explainer (its cache of eager models and its one-at-a-time turn), made
    on the first explanation: a service that never explains never loads a copy."""
    app_state = request.app.state
    found: Explainer | None = getattr(app_state, "imageiq_explainer", None)
    if found is None:
        s = state(request)
        found = app_state.imageiq_explainer = Explainer(settings=s.settings, pixels=s.core.pixels)
    return found


def _wants_png(accept: str) -> bool:
    """Whether ``Accept`` prefers image/png to JSON (by q-value; a tie, or ``*/*``, is JSON)."""
    png = json = 0.0
    for item in accept.split(","):
        media, *params = (p.strip().lower() for p in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in (PNG, "image/*"):
            png = max(png, q)
        if media in (JSON, "application/*", "*/*"):
            json = max(json, q)
    return png > json


# --- reading the request --------------------------------------------------------------------
async def read_explain(request: Request, limits: Limits) -> tuple[ExplainParams, Upload]:
    """The options and the one image, read as :func:`bentos.inputs.read_classify` reads
    classify's (the same parsers, limits and errors), with explain's options."""
    if _content_kind(request) == JSON:
        payload = await _json(request, limits)
        body = _validated(
            ExplainJSON, payload, None, request=request, file_field="image_b64", strict=True
        )
        upload = await _decoded(lambda: _from_b64(body.image_b64, None, limits), body.image_b64)
        if upload.error:
            raise upload.error
        return ExplainParams(model=body.model, head=body.head, label=body.label), upload
    form = await _multipart(request)
    try:
        files = form.getlist("image")
        if not files or not isinstance(files[0], UploadFile):
            raise errors.MissingImage("The multipart field 'image' must carry an image file.")
        fields = {k: v for k, v in form.multi_items() if k != "image"}
        params = _validated(ExplainParams, fields, None, request=request, file_field="image")
        if len(files) > 1:
            raise errors.InvalidParameter("Send one 'image' per request.")
        upload = await _from_file(files[0], limits)
    finally:
        await form.close()
    if upload.error:
        raise upload.error
    return params, upload
