"""Bulk jobs from the command line: ``imageiq worker`` (consumes the job queue),
``imageiq jobs submit|status|results|cancel`` (a client of a running service's
``/v1/jobs``) and ``imageiq batch`` (the workers' pipeline on one machine, no server).

The client commands send the key from ``IMAGEIQ_API_KEY`` or ``--api-key-file``, never
from an argument (which every user of the machine sees in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from imageiq import errors
from imageiq.console import console, err_console
from imageiq.jobs.ledger import result_line as ledger_line
from imageiq.settings import Settings

DEFAULT_URL = "http://127.0.0.1:3000"
FINAL = ("succeeded", "failed", "cancelled")


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "worker", help="consume bulk-job chunks from the task queue (Celery on Redis)"
    )
    p.add_argument("--name", default=None, help="worker name (default: imageiq@<host>-<pid>)")
    p.set_defaults(func=cmd_worker)

    jobs = sub.add_parser("jobs", help="bulk jobs on a running service").add_subparsers(
        dest="jobs_command", required=True
    )
    p = jobs.add_parser("submit", help="submit a job; prints its id (and webhook secret)")
    _client_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--s3-prefix", help="s3://bucket/prefix/ (an allowed bucket)")
    source.add_argument("--manifest", help="s3://bucket/key of a .jsonl, .csv or text manifest")
    source.add_argument("--image-ids", type=Path, help="a file of stored image ids, one a line")
    source.add_argument("--archive", type=Path, help="a zip or tar(.gz) of images to upload")
    p.add_argument("--model", default=None, help="name or name:version (default: the active)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.add_argument("--callback-url", default=None, help="signed webhook when the job ends")
    p.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    p.set_defaults(func=cmd_jobs_submit)

    p = jobs.add_parser("status", help="a job's state and totals")
    _client_arguments(p)
    p.add_argument("job_id")
    p.add_argument("--watch", action="store_true", help="follow it with a progress bar")
    p.set_defaults(func=cmd_jobs_status)

    p = jobs.add_parser("results", help="a job's answers (JSON Lines, or its csv/parquet file)")
    _client_arguments(p)
    p.add_argument("job_id")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    p.add_argument("-o", "--out", type=Path, default=None, help="file (default: stdout)")
    p.set_defaults(func=cmd_jobs_results)

    p = jobs.add_parser("cancel", help="cancel a queued or running job")
    _client_arguments(p)
    p.add_argument("job_id")
    p.set_defaults(func=cmd_jobs_cancel)

    p = sub.add_parser(
        "batch", help="classify a folder, manifest or S3 prefix on this machine (no server)"
    )
    p.add_argument("--model", required=True, help="a registered model: name or name:version")
    p.add_argument("--data", required=True, help="a folder, or an s3://bucket/prefix/")
    p.add_argument("--out", type=Path, required=True, help="results file (.jsonl or .csv)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--min-confidence", type=float, default=0.0)
    p.set_defaults(func=cmd_batch)


def _client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="a file holding the key (else $IMAGEIQ_API_KEY)",
    )


# --- the worker -----------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from imageiq.backends import open_database
    from imageiq.db.engine import check_migrated
    from imageiq.jobs import tasks
    from imageiq.logs import configure_logging

    configure_logging(settings.log_format)
    app = tasks.make_app(settings)
    engine = open_database(settings)
    check_migrated(engine)
    runtime = tasks.WorkerRuntime(settings, engine=engine, app=app)
    tasks.install_runtime(runtime)
    if settings.worker_metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(settings.worker_metrics_port)
    stop = threading.Event()
    keeper = threading.Thread(
        target=tasks.housekeeping,
        args=(runtime, stop),
        name="imageiq-jobs-housekeeping",
        daemon=True,
    )
    keeper.start()
    name = args.name or f"imageiq@{socket.gethostname()}-{os.getpid()}"
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",  # one chunk at a time: the model is batched once per device
                "--concurrency=1",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                settings.jobs_queue,
                "-n",
                name,
            ]
        )
    finally:
        stop.set()
        runtime.close()
        engine.dispose()
    return 0


# --- the client commands --------------------------------------------------------------------
class _Api:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        import httpx

        key = None
        if args.api_key_file is not None:
            key = args.api_key_file.read_text().strip()
        elif settings.api_key is not None:
            key = settings.api_key.get_secret_value()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=120)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            _raise(response)
        return response


def _raise(response: Any) -> None:
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except Exception:
        code, message = "http_error", f"HTTP {response.status_code}: {response.text[:300]}"
    # The service's own code, so the CLI prints it as it prints its own errors.
    kind = type(
        "ServiceError", (errors.ImageIQError,), {"code": code, "status": response.status_code}
    )
    raise kind(message)


def cmd_jobs_submit(args: argparse.Namespace, settings: Settings) -> int:
    api = _Api(args, settings)
    options: dict[str, Any] = {"top_k": args.top_k, "min_confidence": args.min_confidence}
    if args.model:
        options["model"] = args.model
    if args.callback_url:
        options["callback_url"] = args.callback_url
    if args.archive is not None:
        with args.archive.open("rb") as f:
            created = api.call(
                "POST",
                "/v1/jobs",
                params={**options, "filename": args.archive.name},
                content=f,
                headers={"Content-Type": _archive_type(args.archive)},
            ).json()
    else:
        if args.s3_prefix:
            source: dict[str, Any] = {"s3_prefix": args.s3_prefix}
        elif args.manifest:
            source = {"manifest": args.manifest}
        else:
            ids = [line.strip() for line in args.image_ids.read_text().splitlines()]
            source = {"image_ids": [i for i in ids if i]}
        created = api.call("POST", "/v1/jobs", json={**options, "source": source}).json()
    job = created["job"]
    console.print(f"job {job['id']}: {job['total']} images, model {job['model']}")
    if created.get("webhook_secret"):
        console.print(f"webhook secret (shown once): {created['webhook_secret']}")
    if args.wait:
        return _follow(api, job["id"])
    return 0


def _archive_type(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "application/zip"
    if name.endswith((".tar.gz", ".tgz", ".gz")):
        return "application/gzip"
    return "application/x-tar"


def _follow(api: _Api, job_id: str) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task(job_id[:8], total=None)
        while True:
            job = api.call("GET", f"/v1/jobs/{job_id}").json()
            progress.update(
                task,
                total=job["total"],
                completed=job["done"] + job["failed"],
                description=f"{job_id[:8]} {job['state']}",
            )
            if job["state"] in FINAL:
                break
            time.sleep(1.0)
    _print_job(job)
    return 0 if job["state"] == "succeeded" else 1


def _print_job(job: dict[str, Any]) -> None:
    console.print(
        f"job {job['id']} {job['state']}: {job['done']} done, {job['failed']} failed, "
        f"{job['pending']} pending of {job['total']}"
        + (f"; {job['images_per_second']:.1f} images/s" if job.get("images_per_second") else "")
        + (f"; ETA {job['eta_seconds']:.0f} s" if job.get("eta_seconds") else "")
    )
    for fmt, link in (job.get("results") or {}).items():
        console.print(f"  {fmt}: {link}")
    if job.get("error"):
        console.print(f"  error: {job['error']}")


def cmd_jobs_status(args: argparse.Namespace, settings: Settings) -> int:
    api = _Api(args, settings)
    if args.watch:
        return _follow(api, args.job_id)
    _print_job(api.call("GET", f"/v1/jobs/{args.job_id}").json())
    return 0


def cmd_jobs_results(args: argparse.Namespace, settings: Settings) -> int:
    api = _Api(args, settings)
    params = {"format": args.format}
    out = args.out.open("wb") if args.out is not None else sys.stdout.buffer
    try:
        with api.client.stream(
            "GET", f"/v1/jobs/{args.job_id}/results", params=params, follow_redirects=True
        ) as response:
            if response.status_code >= 400:
                response.read()
                _raise(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
    finally:
        if args.out is not None:
            out.close()
    return 0


def cmd_jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    api = _Api(args, settings)
    _print_job(api.call("DELETE", f"/v1/jobs/{args.job_id}").json())
    return 0


# --- one machine ----------------------------------------------------------------------------
def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    """The worker's pipeline over local files or an S3 prefix, results to a file."""
    import csv

    from rich.progress import Progress

    from imageiq.jobs import ledger, result_files
    from imageiq.jobs.blobs import Blobs, split_s3
    from imageiq.jobs.plan import from_prefix
    from imageiq.jobs.tasks import load_bulk
    from imageiq.registry import get_model

    tag = get_model(args.model).tag
    blobs = Blobs(settings)
    if args.data.startswith("s3://"):
        split_s3(args.data)
        refs = from_prefix(settings, blobs, args.data).refs
        read = blobs.read
    else:
        root = Path(args.data)
        if not root.is_dir():
            raise errors.DatasetError(f"{root} is not a folder (or an s3://bucket/prefix/).")
        refs = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not refs:
            raise errors.DatasetError(f"No files under {root}.")

        def read(ref: str) -> bytes:
            return Path(ref).read_bytes()

    bulk = load_bulk(settings, tag)
    lines: dict[int, dict[str, Any]] = {}
    failed = 0
    try:
        with Progress(console=err_console) as progress:
            task = progress.add_task(f"{tag}", total=len(refs))

            def on_batch(outcomes: list[ledger.ItemOutcome]) -> None:
                nonlocal failed
                for o in outcomes:
                    lines[o.position] = _line(o, refs[o.position])
                    failed += o.result is None
                progress.advance(task, len(outcomes))

            bulk.classify(
                list(enumerate(refs)),
                read=read,
                top_k=args.top_k,
                min_confidence=args.min_confidence,
                on_batch=on_batch,
            )
    finally:
        bulk.close()
    ordered = [lines[i] for i in range(len(refs))]
    if args.out.suffix.lower() == ".csv":
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=result_files.COLUMNS)
            writer.writeheader()
            writer.writerows(result_files.flat(line) for line in ordered)
    else:
        with args.out.open("w") as f:
            for line in ordered:
                f.write(json.dumps(line) + "\n")
    console.print(f"{len(refs)} images, {failed} failed: {args.out}")
    return 0 if failed == 0 else 1


def _line(outcome: Any, ref: str) -> dict[str, Any]:
    """An outcome as a line of a job's results (:func:`imageiq.jobs.ledger.result_line`)."""
    result = outcome.result or {}
    return ledger_line(
        {
            "position": outcome.position,
            "ref": ref,
            "state": "done" if outcome.result is not None else "failed",
            "sha256": outcome.sha256,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
            **{
                k: result.get(k)
                for k in ("label", "score", "top_k", "attributes", "width", "height")
            },
        }
    )
