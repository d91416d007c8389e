"""ImageIQ under load: four personas, a staged load and a gate on failures.

    .venv/bin/locust -f load-tests/locustfile.py --headless --host http://127.0.0.1:3000 \\
        --stages smoke             # the key comes from IMAGEIQ_API_KEY (or --api-key)

``make load`` runs it for you (load-tests/run_load.py: a local service, the key, the reports).

Personas (one user class each): an app classifying one image at a time, a bulk uploader
sending batches, a viewer coming back to the same few images (cache hits), and a client
getting everything wrong, which must get the documented 4xx and error code each time. Every
answer is checked; a wrong one is a failure. The run follows ``--stages``
(load_data.STAGES) and stops early, with exit code 1, once failures pass ``--max-fail-ratio``
(default 0: valid requests must all succeed and bad ones must all be refused as documented).
"""

from __future__ import annotations

import base64
import json
import logging
import random
from pathlib import Path
from typing import Any

import gevent
from load_checks import (
    Asked,
    batch_problem,
    cache_problem,
    error_problem,
    gate_problems,
    prediction_problem,
)
from load_data import (
    STAGES,
    Sample,
    bad_requests,
    digit_samples,
    folder_samples,
    fresh,
    scaled,
)
from locust import HttpUser, LoadTestShape, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING, WorkerRunner

log = logging.getLogger("imageiq.load")
SAMPLES: list[Sample] = []  # filled at init, from the options
MiB = 1024 * 1024
# --expect-cache: an image a user had an answer for comes back cached (yes), never does
# (no: the service runs with IMAGEIQ_CACHE_TTL_S=0), or either (any: not checked).
CACHE = ["yes", "no", "any"]


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    def option(name: str, env_var: str, help: str, **kwargs: Any) -> None:
        parser.add_argument(name, env_var=env_var, help=help, **kwargs)

    option("--api-key", "IMAGEIQ_API_KEY", "a key with the classify scope", is_secret=True)
    option("--stages", "LOCUST_STAGES", "load_data.STAGES", choices=list(STAGES), default="default")
    option("--peak-users", "LOCUST_PEAK_USERS", "scale the stages to it", type=int, default=0)
    option("--images", "LOCUST_IMAGES", "also send the jpg/jpeg/png/webp files under this folder")
    option("--max-fail-ratio", "LOCUST_MAX_FAIL_RATIO", "failures allowed", type=float, default=0.0)
    option(
        "--expect-cache", "LOCUST_EXPECT_CACHE", "repeats are hits", choices=CACHE, default="yes"
    )
    option("--max-batch-images", "LOCUST_MAX_BATCH_IMAGES", "the service's", type=int, default=32)
    option(
        "--max-image-bytes", "LOCUST_MAX_IMAGE_BYTES", "the service's", type=int, default=20 * MiB
    )
    option("--request-timeout", "LOCUST_REQUEST_TIMEOUT", "seconds", type=float, default=60.0)


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    SAMPLES[:] = digit_samples()
    if options.images:
        SAMPLES.extend(folder_samples(Path(options.images)))
    if not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_stop_on_failures, environment)


class Persona(HttpUser):
    """What every persona shares: the key, the model's labels, the checked request."""

    abstract = True
    tag = ""  # prefixes its request names: "[app] POST /v1/classify"

    def on_start(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        self.options = options
        self.client.headers["Authorization"] = f"Bearer {options.api_key}"
        self.rng = random.Random()
        self.labels: list[str] = []
        with self.client.get(
            "/v1/categories",
            name=self.named("GET /v1/categories"),
            catch_response=True,
            timeout=options.request_timeout,
        ) as resp:
            body = _json(resp)
            problem = _status_problem(resp, body)
            if not problem and not (isinstance(body, dict) and body.get("labels")):
                problem = f"no labels: {str(body)[:200]}"
            if problem:
                resp.failure(problem)
            else:
                self.labels = list(body["labels"])

    def named(self, what: str) -> str:
        return f"[{self.tag}] {what}"

    def classify(self, sample: Sample, asked: Asked, *, name: str, mode: str = "form") -> None:
        """POST /v1/classify (options as form fields, in the query, or JSON) and check it."""
        options = {"top_k": asked.top_k, "min_confidence": asked.min_confidence}
        kwargs: dict[str, Any] = {"timeout": self.options.request_timeout}
        if mode == "json":
            kwargs["json"] = {"image_b64": base64.b64encode(sample.data).decode(), **options}
        else:
            kwargs["files"] = [("image", (sample.name, sample.data))]
            kwargs["params" if mode == "query" else "data"] = {
                k: str(v) for k, v in options.items()
            }
        with self.client.post("/v1/classify", name=name, catch_response=True, **kwargs) as resp:
            body = _json(resp)
            problem = _status_problem(resp, body) or prediction_problem(
                body, sample, asked, labels=self.labels
            )
            if problem:
                resp.failure(f"{sample.name}: {problem}")


class AppClient(Persona):
    """A mobile app: one photo at a time, options as form fields, in the query or as JSON."""

    weight = 3
    tag = "app"
    wait_time = between(0.5, 2.0)

    @task(4)
    def form(self) -> None:
        top_k = self.rng.randint(1, 10)
        self.classify(self.pick(), Asked(top_k), name=self.named("POST /v1/classify"))

    @task(2)
    def query(self) -> None:
        asked = Asked(self.rng.randint(1, 5), min_confidence=self.rng.choice([0.01, 0.2]))
        name = self.named("POST /v1/classify?top_k=…&min_confidence=…")
        self.classify(self.pick(), asked, name=name, mode="query")

    @task(1)
    def as_json(self) -> None:
        name = self.named("POST /v1/classify (JSON)")
        self.classify(self.pick(), Asked(3), name=name, mode="json")

    def pick(self) -> Sample:
        """A new photo: one of the images in bytes never sent before (no cache hit)."""
        return fresh(self.rng.choice(SAMPLES), self.rng.randbytes(16))


class RepeatViewer(Persona):
    """Scrolls back and forth over the same few images: after the first answer, each one
    must come from the cache (``--expect-cache``)."""

    weight = 2
    tag = "repeat"
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        super().on_start()
        self.favourites = self.rng.sample(SAMPLES, 3)
        self.seen: set[str] = set()

    @task
    def view(self) -> None:
        sample = self.rng.choice(self.favourites)
        seen = sample.sha256 in self.seen
        name = self.named("POST /v1/classify (seen)" if seen else "POST /v1/classify (first)")
        fields = {"top_k": "3"}
        with self.client.post(
            "/v1/classify",
            name=name,
            catch_response=True,
            data=fields,
            files=[("image", (sample.name, sample.data))],
            timeout=self.options.request_timeout,
        ) as resp:
            body = _json(resp)
            problem = _status_problem(resp, body) or prediction_problem(
                body, sample, Asked(3), labels=self.labels
            )
            if not problem:
                expect = self.options.expect_cache
                problem = cache_problem(body["cached"], seen_before=seen, expect=expect)
                self.seen.add(sample.sha256)
            if problem:
                resp.failure(f"{sample.name}: {problem}")


class BulkUploader(Persona):
    """A nightly job: batches of up to --max-batch-images, sometimes with a file that is
    not an image (its result must carry the 415, the others must succeed)."""

    weight = 1
    tag = "bulk"
    wait_time = between(2.0, 5.0)

    @task(3)
    def multipart(self) -> None:
        self.batch(with_bad_item=False, name=self.named("POST /v1/classify/batch"))

    @task(1)
    def with_bad_item(self) -> None:
        self.batch(with_bad_item=True, name=self.named("POST /v1/classify/batch (a bad item)"))

    @task(1)
    def as_json(self) -> None:
        count = self.rng.randint(2, self.options.max_batch_images)
        samples = [fresh(s, self.rng.randbytes(16)) for s in self.rng.choices(SAMPLES, k=count)]
        payload = {"images_b64": [base64.b64encode(s.data).decode() for s in samples], "top_k": 2}
        with self.client.post(
            "/v1/classify/batch",
            name=self.named("POST /v1/classify/batch (JSON)"),
            json=payload,
            catch_response=True,
            timeout=self.options.request_timeout,
        ) as resp:
            self.check(resp, list(samples), Asked(2))

    def batch(self, *, with_bad_item: bool, name: str) -> None:
        count = self.rng.randint(2, self.options.max_batch_images)
        picked = self.rng.choices(SAMPLES, k=count)
        samples: list[Sample | None] = [fresh(s, self.rng.randbytes(16)) for s in picked]
        if with_bad_item:
            samples[self.rng.randrange(count)] = None
        files = [
            ("images", (s.name, s.data) if s else ("notes.txt", b"not an image")) for s in samples
        ]
        top_k = self.rng.randint(1, 5)
        with self.client.post(
            "/v1/classify/batch",
            name=name,
            files=files,
            data={"top_k": str(top_k)},
            catch_response=True,
            timeout=self.options.request_timeout,
        ) as resp:
            self.check(resp, samples, Asked(top_k))

    def check(self, resp: Any, samples: list[Sample | None], asked: Asked) -> None:
        body = _json(resp)
        problem = _status_problem(resp, body) or batch_problem(
            body, samples, asked, labels=self.labels
        )
        if problem:
            resp.failure(problem)


class MisbehavingClient(Persona):
    """Gets everything wrong, one case after the other (load_data.bad_requests): each must
    be answered quickly with its 4xx and error code; a 2xx, a 5xx or no answer fails."""

    weight = 1
    tag = "bad"
    wait_time = between(0.2, 0.5)

    def on_start(self) -> None:
        super().on_start()
        options = self.options
        self.cases = bad_requests(
            SAMPLES[0],
            max_batch_images=options.max_batch_images,
            max_image_bytes=options.max_image_bytes,
        )
        self.next_case = 0

    @task
    def misbehave(self) -> None:
        case = self.cases[self.next_case % len(self.cases)]
        self.next_case += 1
        with self.client.request(
            case.method,
            case.path,
            name=self.named(f"{case.method} {case.path}: {case.name}"),
            catch_response=True,
            timeout=min(10.0, self.options.request_timeout),
            **case.request_kwargs(),
        ) as resp:
            if resp.error is not None and resp.status_code == 0:
                resp.failure(f"no answer: {resp.error!r}")
                return
            problem = error_problem(
                resp.status_code, _json(resp), resp.headers, expected=(case.status, case.code)
            )
            if problem:
                resp.failure(problem)
            else:
                resp.success()


PERSONAS: list[type[Persona]] = [AppClient, RepeatViewer, BulkUploader, MisbehavingClient]


class StagedShape(LoadTestShape):
    """The stages of --stages, one after the other, then stop."""

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        assert options is not None
        stages = scaled(
            STAGES[options.stages],
            peak_users=options.peak_users or None,
            min_users=len(PERSONAS),
        )
        elapsed = self.get_run_time()
        for stage in stages:
            if elapsed < stage.seconds:
                return stage.users, stage.spawn_rate
            elapsed -= stage.seconds
        return None


# --- the gate --------------------------------------------------------------------------------
def _requests_per_persona(environment: Environment) -> dict[str, int]:
    entries = environment.stats.entries.values()
    return {
        p.tag: sum(e.num_requests for e in entries if e.name.startswith(f"[{p.tag}]"))
        for p in PERSONAS
    }


def _stop_on_failures(environment: Environment) -> None:
    """Stops the run as soon as the failures pass the allowed share."""
    runner, options = environment.runner, environment.parsed_options
    assert runner is not None and options is not None
    while runner.state not in (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP):
        gevent.sleep(1)
        # Counting at least 100 requests: one early failure does not end a run that allows some.
        total = environment.stats.total
        if total.num_failures > options.max_fail_ratio * max(total.num_requests, 100):
            log.error(
                "failure gate: %s of %s requests failed, stopping",
                total.num_failures,
                total.num_requests,
            )
            runner.quit()
            return


@events.quitting.add_listener
def _gate(environment: Environment, **_: Any) -> None:
    options, runner = environment.parsed_options, environment.runner
    if isinstance(runner, WorkerRunner) or options is None or runner is None:
        return
    total, per_persona = environment.stats.total, _requests_per_persona(environment)
    problems = gate_problems(
        requests=total.num_requests,
        failures=total.num_failures,
        max_fail_ratio=options.max_fail_ratio,
        per_persona=per_persona,
        exceptions=len(runner.exceptions),
    )
    for problem in problems:
        log.error("gate failed: %s", problem)
    sent = ", ".join(f"{tag} {count}" for tag, count in per_persona.items())
    log.info("%s requests (%s), %s failed", total.num_requests, sent, total.num_failures)
    if not problems:
        log.info("gate passed")
    environment.process_exit_code = 1 if problems else 0


def _json(resp: Any) -> Any:
    try:
        return resp.json()
    except (ValueError, json.JSONDecodeError):
        return None


def _status_problem(resp: Any, body: Any) -> str | None:
    if resp.status_code == 200:
        return None
    if resp.status_code == 0:
        return f"no answer: {resp.error!r}"
    return f"{resp.status_code}: {str(body if body is not None else resp.text)[:300]}"
