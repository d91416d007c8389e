"""A finished job's results as files: Parquet (for dataframes and warehouses) and CSV, one
row per item in submission order, written a page at a time (never the whole job in memory)
and put in the object store: ``s3://<s3_bucket>/<jobs_results_prefix><job>/results.*``
(clients get presigned links), or ``data_dir/jobs/<job>/`` without a bucket (served by
``GET /v1/jobs/{id}/results?format=``). Writing them twice gives the same files.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from imageiq.jobs import ledger
from imageiq.jobs.blobs import S3_SCHEME, Blobs, split_s3
from imageiq.settings import Settings

FORMATS = ("parquet", "csv")
FILE_SCHEME = "file:"
MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
COLUMNS = (
    "position",
    "ref",
    "state",
    "sha256",
    "label",
    "score",
    "predictions",
    "attributes",
    "width",
    "height",
    "error_code",
    "error_message",
)
_PAGE = 10_000


def flat(line: dict[str, Any]) -> dict[str, Any]:
    error = line.get("error") or {}
    return {
        "position": line["position"],
        "ref": line["ref"],
        "state": line["state"],
        "sha256": line["sha256"],
        "label": line.get("label"),
        "score": line.get("score"),
        "predictions": json.dumps(line["predictions"]) if "predictions" in line else None,
        "attributes": json.dumps(line["attributes"]) if "attributes" in line else None,
        "width": line.get("width"),
        "height": line.get("height"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }


def write(settings: Settings, engine: Engine, blobs: Blobs, job_id: str) -> dict[str, str]:
    """Writes both files and returns where each is (``s3://...`` or ``file:...``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("position", pa.int64()),
            ("ref", pa.string()),
            ("state", pa.string()),
            ("sha256", pa.string()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("predictions", pa.string()),
            ("attributes", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="imageiq-job-") as tmp:
        folder = Path(tmp)
        parquet, table = folder / "results.parquet", folder / "results.csv"
        with pq.ParquetWriter(parquet, schema) as writer, table.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=COLUMNS)
            out.writeheader()
            rows: list[dict[str, Any]] = []
            for line in ledger.iter_results(engine, job_id):
                rows.append(flat(line))
                if len(rows) >= _PAGE:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    out.writerows(rows)
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                out.writerows(rows)
        return {fmt: _put(settings, blobs, job_id, folder / f"results.{fmt}") for fmt in FORMATS}


def _put(settings: Settings, blobs: Blobs, job_id: str, path: Path) -> str:
    name = path.name
    if settings.s3_bucket:
        key = f"{settings.jobs_results_prefix}{job_id}/{name}"
        media = MEDIA_TYPES[path.suffix.lstrip(".")]
        blobs.s3.upload_file(str(path), settings.s3_bucket, key, ExtraArgs={"ContentType": media})
        return f"{S3_SCHEME}{settings.s3_bucket}/{key}"
    dest = settings.data_dir / "jobs" / job_id / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return f"{FILE_SCHEME}{dest.resolve()}"


def link(blobs: Blobs, where: str, *, ttl_s: int) -> str | None:
    """A presigned GET for an S3 file; None for a local one (the API serves it)."""
    if not where.startswith(S3_SCHEME):
        return None
    bucket, key = split_s3(where)
    return str(
        blobs.s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_s
        )
    )


def local_path(where: str) -> Path | None:
    return Path(where[len(FILE_SCHEME) :]) if where.startswith(FILE_SCHEME) else None


def links(settings: Settings, blobs: Blobs, job_id: str, results: dict[str, str]) -> dict[str, str]:
    """Where a client gets each file: a presigned URL, or the API's path for a local one."""
    ttl = settings.jobs_results_link_ttl_s
    return {
        fmt: link(blobs, where, ttl_s=ttl) or f"/v1/jobs/{job_id}/results?format={fmt}"
        for fmt, where in results.items()
    }


def describe(settings: Settings, blobs: Blobs, view: ledger.JobView) -> dict[str, Any]:
    """The job as the API, the CLI and the webhooks show it, with links to its files."""
    return ledger.as_dict(view, links=links(settings, blobs, view.id, view.results))
