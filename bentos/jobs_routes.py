"""``/v1/jobs``: bulk classification jobs (``classify`` scope), over :mod:`imageiq.jobs`.

``POST /v1/jobs`` takes a JSON body naming a source (an S3 prefix, a manifest, stored image
ids), or an archive as the body itself (``application/zip``, ``application/x-tar``,
``application/gzip``…, options in the query string), streamed to a temporary file. 202 with
the job and, when it has a callback, the webhook secret (shown once). ``GET /v1/jobs`` lists
the caller's newest jobs, ``GET /v1/jobs/{id}`` one job's progress, ``GET
/v1/jobs/{id}/results`` streams its answers as JSON Lines (``?format=parquet|csv``: the
finished job's file), ``DELETE /v1/jobs/{id}`` cancels it. A job is visible to the key that
submitted it and to admin keys; to any other it does not exist (404).
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path as FilePath
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError

from bentos.auth import require
from bentos.dbcall import db_call
from bentos.http import JOBS_JSON_BYTES, note
from bentos.jobs_schemas import JobCreated, JobOptionsIn, JobOut, JobRequest, JobsOut
from bentos.openapi import ADMITTED, BODY, error_responses, inline_schema
from bentos.state import ServiceState, state
from imageiq import errors
from imageiq.admission import ARCHIVE_MEDIA
from imageiq.classify import MAX_TOP_K
from imageiq.jobs.plan import Plan
from imageiq.jobs.result_files import FORMATS, MEDIA_TYPES
from imageiq.jobs.submit import Caller, JobOptions, Jobs
from imageiq.keys import Principal
from imageiq.logs import request_id_var
from imageiq.settings import MODEL_TAG

router = APIRouter(responses=error_responses(*ADMITTED))
JobId = Path(pattern=r"^[0-9a-f]{32}$", description="A job id.")
# application/octet-stream too: the archive's kind is read from its first bytes.
ARCHIVE_TYPES = ARCHIVE_MEDIA | {"application/octet-stream"}
_NO_JOB = "No job with this id (or not one this key may see)."
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(JobRequest)},
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in sorted(ARCHIVE_TYPES)
            },
        },
    }
}


def jobs(request: Request) -> Jobs:
    """The jobs core, one per app (its Celery producer pool is made once)."""
    app_state = request.app.state
    found = getattr(app_state, "jobs", None)
    if found is None:
        s = state(request)
        found = app_state.jobs = Jobs(s.settings, s.backends.engine)
    return found


def _caller(principal: Principal) -> Caller:
    return Caller(key_id=principal.key_id, admin=principal.allows("admin"))


async def _run(s: ServiceState, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking core call in a worker thread (:func:`bentos.dbcall.db_call`: the
    database down is a 503)."""
    return await db_call(s.backends, lambda _engine: fn(*args, **kwargs))


def _media(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


async def _spool(request: Request, limit: int) -> FilePath:
    """The body, streamed to a temporary file (never whole in memory)."""
    fd, name = tempfile.mkstemp(prefix="imageiq-upload-", suffix=".archive")
    path = FilePath(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise errors.PayloadTooLarge(
                        f"The archive is larger than {limit} bytes "
                        "(IMAGEIQ_JOBS_MAX_ARCHIVE_BYTES).",
                        details={"max_bytes": limit},
                    )
                await anyio.to_thread.run_sync(out.write, chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise errors.InvalidArchive("The archive is empty (0 bytes).", details={"reason": "empty"})
    return path


def _options(s: ServiceState, given: JobOptionsIn) -> JobOptions:
    served = s.pool.resolve(given.model)
    return JobOptions(
        model_name=served.model.name,
        model_version=served.model.version,
        top_k=given.top_k,
        min_confidence=given.min_confidence,
        callback_url=given.callback_url,
        progress_webhooks=given.progress_webhooks,
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobCreated,
    responses={
        202: {
            "headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}
        },
        **error_responses(
            403,
            404,
            413,
            415,
            *BODY,
            s400="Malformed JSON, or an archive that cannot be read.",
            s403="The API key lacks the classify scope, or the source's bucket is not one "
            "jobs may read (bucket_not_allowed).",
            s404="The model asked for is not served.",
            s413="The body, or the archive's members, over their limit.",
            s415="Neither JSON nor an archive.",
            s422="An invalid option or source, a bucket not allowed, a callback URL not public.",
        ),
    },
    summary="Submit a bulk classification job",
    openapi_extra=_BODY,
)
async def submit_job(
    request: Request,
    response: Response,
    principal: Principal = Depends(require("classify")),
    model: str | None = Query(None, pattern=MODEL_TAG, description="Archive uploads: the model."),
    top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="Archive uploads: labels per image."),
    min_confidence: float = Query(
        0.0, ge=0.0, le=1.0, description="Archive uploads: the score cut-off."
    ),
    callback_url: str | None = Query(
        None, max_length=2048, description="Archive uploads: the webhook URL."
    ),
    progress_webhooks: bool = Query(False, description="Archive uploads: progress webhooks."),
    filename: str | None = Query(None, max_length=200, description="Archive uploads: its name."),
) -> JobCreated:
    """202: the job is recorded and queued; poll ``GET /v1/jobs/{id}`` or wait for the
    webhook. Nothing is kept from a refused submission."""
    s = state(request)
    core = jobs(request)
    media = _media(request)
    archive: FilePath | None = None
    try:
        if media == "application/json" or media.endswith("+json"):
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > JOBS_JSON_BYTES:
                raise errors.PayloadTooLarge(
                    f"A JSON job is at most {JOBS_JSON_BYTES} bytes; upload an archive or use a "
                    "manifest for more.",
                    details={"max_bytes": JOBS_JSON_BYTES},
                )
            try:
                body = JobRequest.model_validate_json(await request.body())
            except ValidationError as e:
                raise _invalid(e, "body") from e
            given: JobOptionsIn = body
        elif media in ARCHIVE_TYPES:
            try:
                given = JobOptionsIn(
                    model=model,
                    top_k=top_k,
                    min_confidence=min_confidence,
                    callback_url=callback_url,
                    progress_webhooks=progress_webhooks,
                )
            except ValidationError as e:
                raise _invalid(e, "query") from e
        else:
            raise errors.UnsupportedMediaType(
                "Send a JSON job (application/json) or an archive (application/zip, "
                "application/x-tar, application/gzip).",
                details={"content_type": media[:100]},
            )
        options = _options(s, given)
        note(request.scope, model=f"{options.model_name}:{options.model_version}")
        await _run(s, core.check, options)
        if media in ARCHIVE_TYPES:
            archive = await _spool(request, s.settings.jobs_max_archive_bytes)
            planned: Plan = await _run(s, core.plan_archive, archive, filename=filename)
        else:
            source = body.source
            if source.s3_prefix is not None:
                planned = await _run(s, core.plan_prefix, source.s3_prefix)
            elif source.manifest is not None:
                planned = await _run(s, core.plan_manifest, source.manifest)
            else:
                planned = await _run(s, core.plan_image_ids, source.image_ids or [])
        submitted = await _run(
            s,
            core.submit,
            planned,
            options,
            created_by=principal.key_id,
            request_id=request_id_var.get(),
        )
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
    response.headers["Location"] = f"/v1/jobs/{submitted.job['id']}"
    return JobCreated(job=JobOut(**submitted.job), webhook_secret=submitted.webhook_secret)


def _invalid(error: ValidationError, where: str) -> RequestValidationError:
    """The app's own validation answer (422 ``invalid_parameter``, the fields named)."""
    return RequestValidationError([{**e, "loc": (where, *e["loc"])} for e in error.errors()])


@router.get(
    "/jobs",
    response_model=JobsOut,
    responses=error_responses(403, 422),
    summary="Your newest jobs",
)
async def list_jobs(
    request: Request,
    principal: Principal = Depends(require("classify")),
    limit: int = Query(50, ge=1, le=500),
) -> JobsOut:
    """Newest first: the caller's jobs (an admin key sees everyone's)."""
    jobs_found = await _run(state(request), jobs(request).recent, _caller(principal), limit=limit)
    return JobsOut(jobs=[JobOut(**j) for j in jobs_found])


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=error_responses(403, 404, 422, s404=_NO_JOB),
    summary="A job's progress",
)
async def get_job(
    request: Request,
    job_id: str = JobId,
    principal: Principal = Depends(require("classify")),
) -> JobOut:
    """State, totals (done, failed, pending), throughput, ETA and, once it succeeded, links
    to its results files."""
    core = jobs(request)
    view = await _run(state(request), core.get, job_id, _caller(principal))
    return JobOut(**core.describe(view))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=error_responses(
        403, 404, 409, 422, s404=_NO_JOB, s409="The job has ended (job_finished)."
    ),
    summary="Cancel a job",
)
async def cancel_job(
    request: Request,
    job_id: str = JobId,
    principal: Principal = Depends(require("classify")),
) -> JobOut:
    """Chunks not started are skipped, one in progress stops at its next batch; the answers
    given so far are kept. 409 ``job_finished`` once the job has ended."""
    found = await _run(state(request), jobs(request).cancel, job_id, _caller(principal))
    return JobOut(**found)


@router.get(
    "/jobs/{job_id}/results",
    responses={
        **error_responses(
            403, 404, 409, 422, s404=_NO_JOB, s409="The job has not succeeded (job_not_done)."
        ),
        200: {
            "description": "JSON Lines (one object per image), or the finished job's file.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                **{
                    m: {"schema": {"type": "string", "format": "binary"}}
                    for m in MEDIA_TYPES.values()
                },
            },
        },
        307: {
            "description": "format=parquet|csv: the file's presigned link.",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        },
    },
    response_class=Response,
    summary="A job's answers",
)
async def job_results(
    request: Request,
    job_id: str = JobId,
    format: str = Query("jsonl", pattern="^(jsonl|parquet|csv)$"),
    principal: Principal = Depends(require("classify")),
) -> Response:
    """JSON Lines (the default), one line per image in submission order, streamed as they
    are read (a running job gives what is answered so far, pending lines included). With
    ``format=parquet|csv``, a finished job's file: a redirect to a presigned link, or the
    file itself. 409 ``job_not_done`` before it succeeded."""
    s = state(request)
    core = jobs(request)
    caller = _caller(principal)
    if format in FORMATS:
        url, path = await _run(s, core.results_file, job_id, caller, format)
        if url is not None:
            return RedirectResponse(url, status_code=307)
        assert path is not None
        return FileResponse(path, media_type=MEDIA_TYPES[format], filename=f"{job_id}.{format}")
    lines: Iterator[dict[str, Any]] = await _run(s, core.results, job_id, caller)

    def take(n: int) -> bytes:
        page = []
        for line in itertools.islice(lines, n):
            page.append(json.dumps(line, separators=(",", ":"), default=str).encode() + b"\n")
        return b"".join(page)

    async def stream() -> AsyncIterator[bytes]:
        while True:
            page = await anyio.to_thread.run_sync(take, 1000)
            if not page:
                return
            yield page

    return StreamingResponse(stream(), media_type="application/x-ndjson")
