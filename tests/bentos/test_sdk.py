"""The Python SDK (:mod:`imageiq.client`) against the real service (the shared ``served``
server on PostgreSQL, Redis and S3): every image input, batches beyond the server's
per-request limit, the catalogue calls, feedback, jobs, errors, and 429 retries that
honour ``Retry-After`` and the deadline."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imageiq.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitedError,
)
from imageiq.db.engine import make_engine
from imageiq.keys import create_key
from tests.backends import Stack
from tests.conftest import Server

pytestmark = pytest.mark.slow
WRONG_KEY = "iiq_" + "0" * 16 + "_" + "0" * 48


def new_key(stack: Stack, scopes: list[str], rate_limit: int | None = None) -> str:
    """A key on the served database; with ``rate_limit`` a limit of its own, whose burst is
    the stack's IMAGEIQ_RATE_LIMIT_BURST (5)."""
    engine = make_engine(stack.postgres.url)
    try:
        key, _ = create_key(
            engine, name="sdk", scopes=scopes, pepper=b"", rate_limit_per_minute=rate_limit
        )
    finally:
        engine.dispose()
    return key


def digits(digits_dir: Path, n: int) -> list[Path]:
    """``n`` digit scans, cycling through the classes."""
    files = [sorted((digits_dir / str(d)).iterdir()) for d in range(10)]
    return [files[i % 10][i // 10] for i in range(n)]


@pytest.fixture
def client(served: Server) -> Iterator[Client]:
    with Client(served.url, api_key=served.key) as c:
        yield c


def test_classify_a_path_bytes_a_file_and_a_pil_image_alike(
    client: Client, served: Server, digits_dir: Path
) -> None:
    path = digits(digits_dir, 8)[7]
    by_path = client.classify(path, top_k=3)
    by_str = client.classify(str(path), top_k=3)
    by_bytes = client.classify(path.read_bytes(), top_k=3)
    with path.open("rb") as f:
        by_file = client.classify(f, top_k=3)
    with Image.open(path) as image:
        image.load()
        by_pil = client.classify(image, top_k=3)
    assert by_path.model.name == served.model.name and len(by_path.predictions) == 3
    assert by_path.image.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    for other in (by_str, by_bytes, by_file):
        assert other.image.sha256 == by_path.image.sha256
        assert other.predictions == by_path.predictions
    # Re-encoded as PNG: other bytes, the same pixels, so the same answer.
    assert by_pil.image.format == "PNG"
    assert [p.label for p in by_pil.predictions] == [p.label for p in by_path.predictions]
    for a, b in zip(by_pil.predictions, by_path.predictions, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_batch_beyond_the_server_limit_in_order_with_a_bad_file(
    served: Server, digits_dir: Path, tmp_path: Path
) -> None:
    # The test server's per-request limit, as its 413 states it.
    files = [("images", (p.name, p.read_bytes())) for p in digits(digits_dir, 40)]
    refused = served.post("/v1/classify/batch", files=files)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_images"
    limit = refused.json()["error"]["details"]["max_images"]
    assert limit == 32
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    images: list[object] = [*digits(digits_dir, 2 * limit + 5)]
    images.insert(40, notes)
    # Planned with a guess above the limit: the first refusal teaches it.
    with Client(served.url, api_key=served.key, max_batch_images=100, concurrency=3) as client:
        result = client.classify_batch(images, top_k=2)
        assert client.limits.max_images == limit
    assert len(result.results) == len(images) and result.requests >= 4
    assert (result.succeeded, result.failed) == (len(images) - 1, 1)
    for i, (image, item) in enumerate(zip(images, result.results, strict=True)):
        assert item.index == i and item.filename == Path(str(image)).name
        if image == notes:
            assert item.error is not None and not item.ok
            assert (item.error.status, item.error.code) == (415, "unsupported_image_format")
        else:
            assert item.ok and item.image is not None and len(item.predictions or []) == 2
            assert item.image.sha256 == hashlib.sha256(Path(str(image)).read_bytes()).hexdigest()
            assert item.model is not None and item.model.version == served.model.version


def test_categories_and_models(client: Client, served: Server) -> None:
    categories = client.categories()
    assert categories.labels == [str(d) for d in range(10)] and categories.attributes == {}
    species = client.categories(model="species")
    assert species.attributes == {"shiny": ["no", "yes"], "shadow": ["no", "yes"]}
    models = client.models()
    assert models.ready and models.active == served.model.tag
    active = [m for m in models.models if m.active]
    assert [m.version for m in active] == [served.model.version]
    assert {m.name for m in models.models} == {served.model.name, "species"}
    with pytest.raises(NotFoundError) as e:
        client.categories(model="no-such-model")
    assert e.value.code == "model_not_found" and "served" in e.value.details


def test_feedback_and_stored_images_round_trip(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    path = digits(digits_dir, 10)[3]
    with Client(served.url, api_key=new_key(stack, ["admin"])) as client:
        answer = client.classify(path, store=True)
        image_id = answer.image.id
        assert image_id == answer.image.sha256
        # While the image is still on its way to the database the service answers 503
        # with Retry-After: the client waits it out.
        label = client.feedback(image_id, label="3")
        assert (label.label, label.source, label.image) == ("3", "user", image_id)
        detail = client.images.get(image_id)
        assert [x.id for x in detail.labels] == [label.id]
        assert detail.prediction is not None and detail.prediction.model == answer.model
        assert client.images.content(image_id) == path.read_bytes()
        page = client.images.list(label="3", limit=100)
        assert image_id in [item.id for item in page.items]
        deleted = client.images.delete(image_id)
        assert deleted.id == image_id and deleted.deleted["images"] == 1
        with pytest.raises(NotFoundError) as e:
            client.images.get(image_id)
        assert e.value.code == "image_not_found" and e.value.status == 404


def test_jobs_submit_get_list_results_and_cancel(served: Server, digits_dir: Path) -> None:
    with Client(served.url, api_key=served.key) as client:
        stored = client.classify(digits(digits_dir, 20)[14], store=True).image.id
        assert stored is not None
        deadline = time.monotonic() + 20
        while True:  # the record reaches the database a moment later
            try:
                client.images.get(stored)
                break
            except NotFoundError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        created = client.jobs.submit(image_ids=[stored], top_k=2)
        job = created.job
        assert job.total == 1 and job.state in ("queued", "running", "succeeded")
        assert client.jobs.get(job.id).id == job.id
        assert job.id in [j.id for j in client.jobs.list(limit=10)]
        lines = client.jobs.results(job.id)
        assert [line.position for line in lines] == [0]
        if not client.jobs.get(job.id).finished:
            assert client.jobs.cancel(job.id).state == "cancelled"
        with pytest.raises(ConflictError) as e:
            client.jobs.cancel(job.id)
        assert e.value.code == "job_finished"


def test_a_wrong_key_raises_authentication_error(served: Server) -> None:
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    client = Client(served.url, api_key=WRONG_KEY, http_client=http)
    with http, client, pytest.raises(AuthenticationError) as e:
        client.models()
    assert (e.value.status, e.value.code) == (401, "unauthorized")
    assert e.value.request_id and len(e.value.request_id) >= 16
    assert len(sent) == 1  # never retried


class Timeline:
    """Event hooks noting when each request left and each answer (status, Retry-After)
    arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, int, str | None]] = []

    def request(self, request: httpx.Request) -> None:
        self.events.append(("request", time.monotonic(), 0, None))

    def response(self, response: httpx.Response) -> None:
        at = time.monotonic()
        self.events.append(
            ("response", at, response.status_code, response.headers.get("retry-after"))
        )

    def client(self) -> httpx.Client:
        return httpx.Client(event_hooks={"request": [self.request], "response": [self.response]})


def spend_burst(served: Server, key: str, digits_dir: Path) -> None:
    """One batch of 5 images: the whole burst of a key with a limit of its own."""
    files = [("images", (p.name, p.read_bytes())) for p in digits(digits_dir, 5)]
    resp = served.post(
        "/v1/classify/batch", files=files, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status_code == 200, resp.text


def test_a_429_is_retried_after_its_retry_after(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    key = new_key(stack, ["classify"], rate_limit=12)  # burst 5, then one every 5 s
    spend_burst(served, key, digits_dir)
    timeline = Timeline()
    with timeline.client() as http, Client(served.url, api_key=key, http_client=http) as client:
        # Normally the first call meets the 429; a slow machine may have earned a token back
        # meanwhile, so call until one did (each call succeeds in the end either way).
        for _ in range(6):
            assert client.classify(digits(digits_dir, 1)[0]).predictions
            if any(status == 429 for _, _, status, _ in timeline.events):
                break
    statuses = [status for kind, _, status, _ in timeline.events if kind == "response"]
    assert 429 in statuses and statuses[-1] == 200
    for i, (_, at, status, retry_after) in enumerate(timeline.events):
        if status == 429:
            assert retry_after is not None and float(retry_after) >= 1
            next_request = timeline.events[i + 1]
            assert next_request[0] == "request"
            assert next_request[1] - at >= float(retry_after)


def test_a_deadline_too_short_for_retry_after_raises_without_sleeping(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    key = new_key(stack, ["classify"], rate_limit=12)  # Retry-After up to 5 s
    spend_burst(served, key, digits_dir)
    with Client(served.url, api_key=key, deadline_s=0.5) as client:
        for _ in range(6):
            started = time.monotonic()
            try:
                client.classify(digits(digits_dir, 1)[0])
            except RateLimitedError as e:
                elapsed = time.monotonic() - started
                error = e
                break
        else:
            pytest.fail("no 429 in 6 calls")
    assert error.code == "rate_limited" and error.status == 429
    assert error.retry_after is not None and error.retry_after >= 1
    assert error.details["cost"] == 1 and error.request_id
    assert elapsed < 0.5


def test_a_batch_learns_a_keys_burst_and_keeps_going(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    key = new_key(stack, ["classify"], rate_limit=60)  # at most 5 images per request
    images = digits(digits_dir, 7)
    with Client(served.url, api_key=key, concurrency=1, max_retries=3) as client:
        result = client.classify_batch(images)
        assert client.limits.max_images == 5
    assert [item.filename for item in result.results] == [p.name for p in images]
    # A chunk of a whole burst is refused while the bucket refills, then passes: the
    # Retry-After of a refused batch covers the image its admission paid too.
    assert all(item.ok for item in result.results), [i.error for i in result.results]


def test_the_async_client(served: Server, digits_dir: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    images: list[object] = [*digits(digits_dir, 36)]
    images.insert(3, notes)

    async def main() -> None:
        async with AsyncClient(served.url, api_key=served.key) as client:
            one = await client.classify(digits(digits_dir, 1)[0].read_bytes(), top_k=1)
            assert one.model.version == served.model.version and len(one.predictions) == 1
            batch, categories, models = await asyncio.gather(
                client.classify_batch(images), client.categories(), client.models()
            )
            assert batch.requests == 2 and (batch.succeeded, batch.failed) == (36, 1)
            assert [item.index for item in batch.results] == list(range(37))
            bad = batch.results[3].error
            assert bad is not None and bad.code == "unsupported_image_format"
            assert categories.labels[0] == "0" and models.ready
        async with AsyncClient(served.url, api_key=WRONG_KEY) as wrong:
            with pytest.raises(AuthenticationError) as e:
                await wrong.classify_batch(images)
            assert e.value.code == "unauthorized" and e.value.request_id

    asyncio.run(main())
