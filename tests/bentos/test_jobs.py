"""Bulk jobs end to end: the service (the shared ``served`` server on real PostgreSQL, Redis
and S3 in moto), two ``imageiq worker`` processes, a webhook receiver on 127.0.0.1.

The acceptance run: a job of 2,000 images completes while one worker is SIGKILLed mid-run;
every image has exactly one answer (counted in the database and in the results); the
webhook arrives with a valid signature; a cancelled job stops. And hostile submissions get
4xx and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from imageiq.db.schema import Job, JobItem, JobResult, WebhookDelivery
from tests.backends import Stack, free_port, wait_for
from tests.conftest import ROOT, Server

pytestmark = pytest.mark.slow

IMAGES = 2000
CORRUPT = 10  # of them: not images at all, each its own per-item error
PREFIX = "bulk/"


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps every POST's headers and raw body."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/imageiq?token=t1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, event: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if h.get("imageiq-event") == event]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Workers:
    """``imageiq worker`` processes, each in a session of its own (killed as a group)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            self._start_one(self.logs / f"worker-{len(self.procs)}.log")

    def _start_one(self, log: Path) -> None:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imageiq_cli", "worker"],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        wait_for(lambda: b" ready." in log.read_bytes() or proc.poll() is not None, 120, "a worker")
        assert proc.poll() is None, log.read_text()[-3000:]

    def kill(self, index: int) -> None:
        os.killpg(self.procs[index].pid, signal.SIGKILL)
        self.procs[index].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def images(stack: Stack) -> list[str]:
    """2,000 objects under bulk/ in the service's bucket: 1,990 distinct PNGs, 10 not images."""
    client = stack.s3.client()
    keys = [f"{PREFIX}{i:05d}.png" for i in range(IMAGES)]

    def put(i: int) -> None:
        body = b"not an image %d" % i if i % (IMAGES // CORRUPT) == 7 else _png(i)
        client.put_object(Bucket=stack.s3.bucket, Key=keys[i], Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(IMAGES)))
    return keys


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def workers(served: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    env = {
        **served.env,
        # A chunk a dead worker held goes to the other one within seconds.
        "IMAGEIQ_JOBS_VISIBILITY_TIMEOUT_S": "8",
        "IMAGEIQ_JOBS_DECODE_PROCESSES": "1",
        "IMAGEIQ_JOBS_BATCH_SIZE": "16",
        "IMAGEIQ_TORCH_THREADS": "1",
        "IMAGEIQ_WORKER_METRICS_PORT": "0",
        "IMAGEIQ_LOG_FORMAT": "text",
    }
    running = Workers(env, tmp_path_factory.mktemp("workers"))
    running.start(2)
    yield running
    running.stop()


def _job(served: Server, job_id: str) -> dict[str, Any]:
    got = served.get(f"/v1/jobs/{job_id}")
    assert got.status_code == 200, got.text
    return dict(got.json())


def _wait_state(
    served: Server, job_id: str, states: tuple[str, ...], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = _job(served, job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        time.sleep(0.5)


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written here from the documented scheme (not the service's code)."""
    fields = dict(part.split("=", 1) for part in headers["imageiq-signature"].split(","))
    expected = hmac.new(
        secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def test_a_job_survives_a_worker_killed_mid_run(
    served: Server, stack: Stack, images: list[str], workers: Workers, receiver: Receiver
) -> None:
    created = served.post(
        "/v1/jobs",
        json={
            "source": {"s3_prefix": f"s3://{stack.s3.bucket}/{PREFIX}"},
            "model": served.model.tag,
            "top_k": 3,
            "callback_url": receiver.url,
        },
    )
    assert created.status_code == 202, created.text
    body = created.json()
    job_id, secret = body["job"]["id"], body["webhook_secret"]
    assert body["job"]["total"] == IMAGES and secret.startswith("whsec_")
    assert created.headers["location"] == f"/v1/jobs/{job_id}"

    # Mid-run: some answered, most not; then one worker dies with its chunk in hand.
    wait_for(lambda: _job(served, job_id)["done"] >= 200, 120, "the job to be under way")
    workers.kill(0)
    redis = __import__("redis").Redis.from_url(stack.redis.url)
    assert redis.hlen("unacked") >= 1  # the dead worker's chunk, waiting to be handed on
    before = _job(served, job_id)
    assert before["pending"] > 0 and before["state"] == "running"

    job = _wait_state(served, job_id, ("succeeded", "failed"), 300)
    assert job["state"] == "succeeded", job
    assert (job["done"], job["failed"], job["pending"]) == (IMAGES - CORRUPT, CORRUPT, 0)

    # Exactly one answer per image, counted in the database ...
    with stack.session() as session:
        items = session.execute(
            select(JobItem.state, func.count())
            .where(JobItem.job_id == job_id)
            .group_by(JobItem.state)
        ).all()
        assert dict(items) == {"done": IMAGES - CORRUPT, "failed": CORRUPT}
        results = session.scalar(select(func.count()).where(JobResult.job_id == job_id))
        distinct = session.scalar(
            select(func.count(func.distinct(JobItem.sha256))).where(
                JobItem.job_id == job_id, JobItem.state == "done"
            )
        )
        assert results == distinct == IMAGES - CORRUPT
    # ... and in the results stream: every position once, in order.
    got = served.get(f"/v1/jobs/{job_id}/results")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in got.text.splitlines()]
    assert [line["position"] for line in lines] == list(range(IMAGES))
    assert [line["ref"] for line in lines] == [f"s3://{stack.s3.bucket}/{k}" for k in images]
    answered = [line for line in lines if line["state"] == "done"]
    assert len(answered) == IMAGES - CORRUPT
    assert all(1 <= len(line["predictions"]) <= 3 and line["label"] for line in answered)
    assert {line["error"]["code"] for line in lines if line["state"] == "failed"} <= {
        "corrupt_image",
        "unsupported_image_format",
    }

    # The job's answer for an image is /v1/classify's.
    first = answered[0]
    data = stack.s3.client().get_object(Bucket=stack.s3.bucket, Key=images[first["position"]])
    single = served.post(
        "/v1/classify",
        files={"image": ("x.png", data["Body"].read(), "image/png")},
        params={"model": served.model.tag, "top_k": 3},
    ).json()
    pairs = zip(single["predictions"], first["predictions"], strict=True)
    for one, bulk in pairs:
        assert one["label"] == bulk["label"]
        assert one["score"] == pytest.approx(bulk["score"], abs=1e-5)
    assert single["attributes"] == first["attributes"] == {}

    # The results files: presigned links to Parquet and CSV in the bucket.
    import pyarrow.parquet as pq

    parquet = httpx.get(job["results"]["parquet"], timeout=30)
    assert parquet.status_code == 200
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == IMAGES and table.column("position").to_pylist() == list(range(IMAGES))
    csv_text = httpx.get(job["results"]["csv"], timeout=30).text
    assert len(csv_text.strip().splitlines()) == IMAGES + 1

    # The webhook: delivered once the job succeeded, signed with the secret shown once.
    wait_for(lambda: receiver.events("job.succeeded"), 60, "the webhook")
    headers, raw = receiver.events("job.succeeded")[0]
    assert _signed(secret, headers, raw)
    assert not _signed("whsec_wrong", headers, raw)
    sent = json.loads(raw)
    assert sent["type"] == "job.succeeded" and sent["data"]["id"] == job_id
    assert sent["data"]["done"] == IMAGES - CORRUPT
    with stack.session() as session:
        attempts = session.scalars(
            select(WebhookDelivery.status_code).where(WebhookDelivery.job_id == job_id)
        ).all()
    assert 204 in attempts
    workers.start(1)  # back to two for the tests after


def test_a_cancelled_job_stops(
    served: Server, stack: Stack, images: list[str], workers: Workers, receiver: Receiver
) -> None:
    created = served.post(
        "/v1/jobs",
        json={
            "source": {"s3_prefix": f"s3://{stack.s3.bucket}/{PREFIX}"},
            "callback_url": receiver.url,
        },
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["job"]["id"]
    wait_for(lambda: _job(served, job_id)["done"] >= 50, 120, "the job to be under way")
    cancelled = served.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    # A chunk in progress stops at its next batch; nothing is answered after that.
    time.sleep(4)
    settled = _job(served, job_id)
    time.sleep(4)
    later = _job(served, job_id)
    assert later["state"] == "cancelled"
    assert later["done"] + later["failed"] == settled["done"] + settled["failed"] < IMAGES
    assert later["pending"] > 0
    again = served.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"
    wait_for(lambda: receiver.events("job.cancelled"), 60, "the cancellation webhook")


def test_an_uploaded_archive_and_stored_images(
    served: Server, stack: Stack, workers: Workers
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(12):
            z.writestr(f"photos/{i:02d}.png", _png(10_000 + i))
        z.writestr("__MACOSX/photos/._00.png", b"resource fork")
        z.writestr("photos/.DS_Store", b"finder")
    created = served.post(
        "/v1/jobs",
        content=archive.getvalue(),
        headers={"Content-Type": "application/zip"},
        params={"top_k": 2, "filename": "photos.zip"},
    )
    assert created.status_code == 202, created.text
    job = created.json()["job"]
    assert job["total"] == 12 and job["source"] == {
        "kind": "archive",
        "members": 12,
        "filename": "photos.zip",
    }
    assert created.json()["webhook_secret"] is None
    done = _wait_state(served, job["id"], ("succeeded", "failed"), 120)
    assert (done["state"], done["done"]) == ("succeeded", 12)

    # Its members are stored images now: a job over their ids gives the same answers.
    lines = [json.loads(x) for x in served.get(f"/v1/jobs/{job['id']}/results").text.splitlines()]
    ids = [line["sha256"] for line in lines]
    assert ids == [hashlib.sha256(_png(10_000 + i)).hexdigest() for i in range(12)]
    served_ids = [i for i in ids[:5]]
    # Stored images (the images table) come from /v1/classify with store=true.
    for i in range(5):
        stored = served.post(
            "/v1/classify",
            files={"image": ("x.png", _png(10_000 + i), "image/png")},
            params={"store": "true"},
        )
        assert stored.status_code == 200, stored.text
    wait_for(lambda: _stored(served, served_ids), 30, "the images to be recorded")
    by_ids = served.post("/v1/jobs", json={"source": {"image_ids": served_ids}, "top_k": 2})
    assert by_ids.status_code == 202, by_ids.text
    finished = _wait_state(served, by_ids.json()["job"]["id"], ("succeeded", "failed"), 120)
    assert finished["done"] == 5
    again = served.get(f"/v1/jobs/{finished['id']}/results").text.splitlines()
    assert [json.loads(x)["label"] for x in again] == [line["label"] for line in lines[:5]]


def _stored(served: Server, ids: list[str]) -> bool:
    return all(served.get(f"/v1/images/{i}").status_code == 200 for i in ids)


# --- hostile submissions: 4xx, nothing left behind -----------------------------------------
def _nothing_left(stack: Stack, before: tuple[int, int]) -> None:
    assert (stack.count(Job), len(stack.s3.object_keys())) == before


def _counts(stack: Stack) -> tuple[int, int]:
    return stack.count(Job), len(stack.s3.object_keys())


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _post_archive(served: Server, data: bytes, media: str = "application/zip") -> Any:
    return served.post("/v1/jobs", content=data, headers={"Content-Type": media})


@pytest.mark.parametrize(
    ("source", "status", "code"),
    [
        ({"s3_prefix": "s3://somebody-elses-bucket/"}, 403, "bucket_not_allowed"),
        ({"manifest": "s3://somebody-elses-bucket/list.txt"}, 403, "bucket_not_allowed"),
        ({"s3_prefix": "s3://imageiq-test/nothing-here/"}, 422, "invalid_source"),
        ({"image_ids": ["0" * 64]}, 404, "image_not_found"),
        ({"image_ids": ["../../etc/passwd"]}, 422, "invalid_source"),
        ({"s3_prefix": "s3://imageiq-test/", "image_ids": ["0" * 64]}, 422, "invalid_parameter"),
    ],
)
def test_bad_sources_are_refused(
    served: Server, stack: Stack, source: dict[str, Any], status: int, code: str
) -> None:
    before = _counts(stack)
    got = served.post("/v1/jobs", json={"source": source})
    assert (got.status_code, got.json()["error"]["code"]) == (status, code), got.text
    _nothing_left(stack, before)


@pytest.mark.parametrize(
    "lines",
    [
        "bulk/00001.png\n../private/secrets.png\n",
        "bulk/00001.png\nbulk/../../escape.png\n",
        "/etc/passwd\n",
        "file:///etc/passwd\n",
        "https://169.254.169.254/latest/meta-data/\n",
        "s3://somebody-elses-bucket/x.png\n",
    ],
)
def test_a_manifest_that_climbs_out_is_refused(served: Server, stack: Stack, lines: str) -> None:
    stack.s3.client().put_object(Bucket=stack.s3.bucket, Key="manifests/bad.txt", Body=lines)
    before = _counts(stack)
    got = served.post(
        "/v1/jobs", json={"source": {"manifest": f"s3://{stack.s3.bucket}/manifests/bad.txt"}}
    )
    assert got.status_code in (403, 422), got.text
    assert got.json()["error"]["code"] in ("invalid_manifest", "bucket_not_allowed")
    _nothing_left(stack, before)


def test_hostile_archives_are_refused(served: Server, stack: Stack) -> None:
    png = _png(1)
    bomb = _zip({"big.png": b"\0" * (40 * 1024 * 1024)})  # 40 MiB of zeros in ~40 KiB
    assert len(bomb) < 200_000
    many = _zip({f"{i}.png": b"" for i in range(1500)})  # the servers' limit is 1,000
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:gz") as t:
        info = tarfile.TarInfo("photos/passwd.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    cases = [
        (bomb, "application/zip", "member_too_large"),
        (many, "application/zip", "too_many_members"),
        (_zip({"/etc/cron.d/evil.png": png}), "application/zip", "bad_member_name"),
        (_zip({"../../evil.png": png}), "application/zip", "bad_member_name"),
        (_zip({"a/../../evil.png": png}), "application/zip", "bad_member_name"),
        (
            _zip({"ok.png": png, "inner.zip": _zip({"x.png": png})}),
            "application/zip",
            "nested_archive",
        ),
        (link.getvalue(), "application/gzip", "link"),
        (b"PK\x03\x04 this is not really a zip", "application/zip", "unreadable"),
        (b"random bytes " * 100, "application/x-tar", "unreadable"),
    ]
    before = _counts(stack)
    for data, media, reason in cases:
        got = _post_archive(served, data, media)
        assert got.status_code == 422, (reason, got.text)
        error = got.json()["error"]
        assert (error["code"], error["details"]["reason"]) == ("invalid_archive", reason)
    _nothing_left(stack, before)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.0.0.7/hook",
        "http://127.0.0.2:9/hook",  # loopback, outside the tests' allowed 127.0.0.1/32
        "http://[::1]/hook",
        "http://user:pass@example.com/hook",
        "ftp://example.com/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_callbacks_to_internal_addresses_are_refused(
    served: Server, stack: Stack, url: str
) -> None:
    before = _counts(stack)
    got = served.post(
        "/v1/jobs",
        json={"source": {"s3_prefix": f"s3://{stack.s3.bucket}/{PREFIX}"}, "callback_url": url},
    )
    assert got.status_code == 422, got.text
    assert got.json()["error"]["code"] == "callback_not_allowed"
    _nothing_left(stack, before)


def test_jobs_are_private_to_their_key(served: Server, stack: Stack) -> None:
    from imageiq.db.engine import make_engine
    from imageiq.keys import create_key
    from imageiq.settings import Settings

    engine = make_engine(stack.postgres.url)
    try:
        pepper = Settings(api_key_pepper=served.env.get("IMAGEIQ_API_KEY_PEPPER")).pepper
        other, _ = create_key(engine, name="other", scopes=["classify"], pepper=pepper)
    finally:
        engine.dispose()
    created = _post_archive(served, _zip({"one.png": _png(5)}))
    assert created.status_code == 202, created.text
    job_id = created.json()["job"]["id"]
    assert job_id in [j["id"] for j in served.get("/v1/jobs").json()["jobs"]]
    headers = {"Authorization": f"Bearer {other}"}
    assert served.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 404
    assert served.get(f"/v1/jobs/{job_id}/results", headers=headers).status_code == 404
    assert served.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 404
    assert served.get("/v1/jobs", headers=headers).json()["jobs"] == []
    assert served.get("/v1/jobs/not-a-job-id").status_code == 422


def test_the_cli_submits_follows_and_reads_a_job(
    served: Server, workers: Workers, tmp_path: Path
) -> None:
    archive = tmp_path / "few.zip"
    archive.write_bytes(_zip({f"{i}.png": _png(20_000 + i) for i in range(6)}))
    key_file = tmp_path / "key"
    key_file.write_text(served.key + "\n")
    env = {**os.environ, **served.env, "IMAGEIQ_API_KEY": served.key}

    def cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imageiq_cli", "jobs", *args, "--url", served.url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            **kwargs,
        )

    submitted = cli("submit", "--archive", str(archive), "--top-k", "2", "--wait")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split()[1].rstrip(":")
    assert "succeeded: 6 done, 0 failed" in " ".join(submitted.stdout.split())
    status = cli("status", job_id, "--api-key-file", str(key_file))
    assert status.returncode == 0 and "succeeded" in status.stdout
    out = tmp_path / "results.csv"
    got = cli("results", job_id, "--format", "csv", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert len(out.read_text().strip().splitlines()) == 7
    lines = cli("results", job_id).stdout.splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["done"] * 6
    # A finished job cannot be cancelled: the service's code, exit status 2.
    refused = cli("cancel", job_id)
    assert refused.returncode == 2 and "job_finished" in refused.stderr
    # A wrong key: the service's 401, never a traceback.
    env["IMAGEIQ_API_KEY"] = "iiq_wrong"
    denied = cli("status", job_id)
    assert denied.returncode == 2 and "unauthorized" in denied.stderr
