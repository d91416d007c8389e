"""Benchmark: the in-process ceiling against the served API, measured side by side in one run.

    make bench                                   # the full run; rewrites docs/performance.md
    .venv/bin/python load-tests/bench.py --quick --no-docs   # a short smoke run

What one run measures, on this machine only (127.0.0.1), bounded in time and count:

1. Models: a ResNet-50 trained from scratch on scikit-learn's digits at 224 px (two epochs:
   minutes on 2 cores, and a real validation split), its int8 version from
   ``imageiq quantize`` (refused if it loses more than one point of top-1 on that split), and
   an untrained EfficientNet-B0. Throughput does not depend on the weights; accuracy does,
   which is why the int8 model is a trained one.
2. The ceiling: each model in-process at batch 1, 2, 4 ... 32 with the service's own
   inference settings (compiled, as the service does before /readyz), on a model thread
   like the server's; the best batch is the ceiling. Measured right before and right
   after that model's servers; the higher pass counts.
3. Served: ``bentoml serve`` per model, with adaptive batching on and off (both servers up
   at once, their phases taking turns, each pair of twin phases in four stretches per
   server, A B B A B A A B), closed-loop clients at concurrency 1, 4, 16, 64
   and then 1 again; every request a distinct 224x224 JPEG (a
   different comment segment, so the cache never answers), with an API key, through auth,
   rate limiting, the cache lookup and the prediction log, as in production. Then, for
   ResNet-50: the cache-hit path, a 4000x3000 JPEG against the 224x224 one, and the batch
   endpoint.

Writes the numbers as JSON, a plot (throughput and p99 against concurrency) and a Markdown
report; with ``--docs`` (the default) the report replaces the generated part of
docs/performance.md. Every server is a process group this script starts and ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml-bench"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402
import bench_report  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from local_server import LocalServer, serving, tree_cpu_seconds  # noqa: E402
from PIL import Image  # noqa: E402

from imageiq.inference import Classifier, InferenceOptions, resolve_precision  # noqa: E402
from imageiq.registry import RegisteredModel, get_model  # noqa: E402
from imageiq.settings import Settings  # noqa: E402

DIGITS = ROOT / ".data" / "digits"
OUT = ROOT / "docs" / "benchmarks"
BATCHES = (1, 2, 4, 8, 16, 32)
CONCURRENCY = (1, 4, 16, 64)
BULK_IMAGES = 16  # images per /v1/classify/batch request
SLICES = 4  # stretches per phase when batching on and off are compared (see serve)


# --- images -----------------------------------------------------------------------------------
def photo(width: int, height: int) -> Image.Image:
    """A real photograph (scikit-learn's sample image), resized: camera-like JPEG content."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize(
        (width, height), Image.Resampling.BICUBIC
    )


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def unique(data: bytes, n: int) -> bytes:
    """The same JPEG with a comment segment naming ``n``: same pixels, a different sha256."""
    comment = f"imageiq-bench {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


# --- models -----------------------------------------------------------------------------------
def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "imageiq_cli", *args], cwd=ROOT, check=True)


def newest(name: str) -> RegisteredModel | None:
    try:
        return get_model(f"{name}:latest")
    except Exception:  # not registered yet
        return None


def prepare_models(*, retrain: bool, quick: bool) -> dict[str, RegisteredModel]:
    """The three models, trained or quantized only when this model store lacks them."""
    if not DIGITS.exists():
        from imageiq.demo import write_digits

        write_digits(DIGITS)
    models: dict[str, RegisteredModel] = {}
    resnet = None if retrain else newest("bench-resnet50")
    if resnet is None:
        precision = resolve_precision("auto", torch.device("cpu"))  # bf16 where native
        cli(
            *("train", "--data", str(DIGITS), "--arch", "resnet50", "--image-size", "224"),
            *("--resize-size", "224", "--epochs", "2", "--precision", precision),
            *("--batch-size", "32", "--warmup-epochs", "0.25", "--crop-scale", "1"),
            *("--no-hflip", "--color-jitter", "0", "--model-name", "bench-resnet50"),
        )
        resnet = get_model("bench-resnet50:latest")
    models["resnet50"] = resnet
    int8 = None if retrain else newest("bench-resnet50-int8")
    if int8 is None or int8.card.training_config.get("parent") != resnet.tag:
        cli(
            *("quantize", "--model", resnet.tag, "--data", str(DIGITS)),
            *("--name", "bench-resnet50-int8", "--max-accuracy-drop", "0.01"),
        )
        int8 = get_model("bench-resnet50-int8:latest")
    models["resnet50 int8"] = int8
    if not quick:
        effnet = None if retrain else newest("bench-efficientnet_b0")
        if effnet is None:
            effnet = untrained("efficientnet_b0")
        models["efficientnet_b0"] = effnet
    return models


def untrained(arch: str) -> RegisteredModel:
    from imageiq.architectures import build_model
    from imageiq.preprocessing import PreprocessConfig
    from imageiq.registry import ModelCard, register_model

    torch.manual_seed(0)
    labels = [str(i) for i in range(10)]
    net = build_model(arch=arch, num_classes=len(labels))
    card = ModelCard(
        architecture=arch,
        labels=labels,
        preprocessing=PreprocessConfig(resize_size=224, crop_size=224),
    )
    return register_model(net, card, name=f"bench-{arch}")


# --- the ceiling: the model in-process --------------------------------------------------------
class Ceiling:
    """Images/s at each batch size with the service's settings, on one model thread.

    Measured twice per model, right before and right after its servers (the model stays
    loaded in between, idle): this shared machine's speed drifts by tens of percent over
    minutes, and the higher of the two passes is the ceiling, so a slow spell during the
    ceiling cannot flatter the served/ceiling ratios."""

    def __init__(self, model: RegisteredModel, *, seconds: float, threads: int) -> None:
        settings = Settings()
        options = InferenceOptions(
            precision=settings.precision,
            channels_last=settings.channels_last,
            compile=settings.compile,
            max_batch_size=settings.max_batch_size,
        )
        self.model, self.seconds = model, seconds
        self.thread = ThreadPoolExecutor(1)  # one model thread, as in the server
        self.thread.submit(torch.set_num_threads, threads).result()
        self.classifier = self.thread.submit(
            Classifier.load, model.tag, device=settings.device, options=options, threads=threads
        ).result()
        self.classifier.warm_up()  # compiles each batch size, as the service does before /readyz
        side = self.classifier.input_shape[-1]
        self.probe = torch.randint(0, 256, (max(BATCHES), 3, side, side), dtype=torch.uint8)
        self.passes: list[dict[str, Any]] = []

    def _timed(self, batch: torch.Tensor) -> tuple[float, list[float]]:
        for _ in range(2):
            self.classifier.predict_proba(batch)
        calls: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < self.seconds or len(calls) < 3:
            t = time.perf_counter()
            self.classifier.predict_proba(batch)
            calls.append(time.perf_counter() - t)
        return len(calls) * len(batch) / (time.perf_counter() - started), calls

    def measure(self) -> None:
        per_batch: dict[int, float] = {}
        latency_ms = 0.0
        for size in BATCHES:
            img_s, calls = self.thread.submit(self._timed, self.probe[:size]).result()
            per_batch[size] = round(img_s, 1)
            if size == 1:
                latency_ms = round(statistics.median(calls) * 1000, 2)
            print(f"  ceiling {self.model.tag} batch {size}: {img_s:.1f} img/s", file=sys.stderr)
        self.passes.append({"img_s": per_batch, "batch1_latency_ms": latency_ms})

    def result(self) -> dict[str, Any]:
        """The best of the passes at each batch size; the lowest batch-1 latency."""
        per_batch = {b: max(p["img_s"][b] for p in self.passes) for b in BATCHES}
        best = max(per_batch, key=lambda b: per_batch[b])
        classifier = self.classifier
        return {
            "runtime": "onnxruntime int8" if classifier.int8 is not None else classifier.precision,
            "img_s": per_batch,
            "best_batch": best,
            "best_img_s": per_batch[best],
            "batch1_latency_ms": min(p["batch1_latency_ms"] for p in self.passes),
            "passes": self.passes,
        }

    def close(self) -> None:
        self.thread.shutdown()


# --- the served API ---------------------------------------------------------------------------
@dataclass
class Phase:
    """One closed-loop measurement: ``concurrency`` clients, each sending its next request
    as soon as the last one is answered, for ``seconds`` after a warm-up."""

    name: str
    concurrency: int
    kind: str = "single"  # single | bulk | cache | large
    result: dict[str, Any] = field(default_factory=dict)


class Load:
    def __init__(self, server: LocalServer, key: str, *, small: bytes, large: bytes) -> None:
        self.server = server
        self.url, self.headers = server.url, {"Authorization": f"Bearer {key}"}
        self.small, self.large = small, large
        self.counter = 0

    def body(self, kind: str) -> tuple[str, aiohttp.FormData, int]:
        self.counter += 1
        form = aiohttp.FormData()
        if kind == "bulk":
            for i in range(BULK_IMAGES):
                data = unique(self.small, self.counter * BULK_IMAGES + i)
                form.add_field("images", data, filename=f"{i}.jpg", content_type="image/jpeg")
            return "/v1/classify/batch", form, BULK_IMAGES
        if kind == "cache":
            data = self.small
        else:
            data = unique(self.large if kind == "large" else self.small, self.counter)
        form.add_field("image", data, filename="p.jpg", content_type="image/jpeg")
        return "/v1/classify", form, 1

    async def run(self, phase: Phase, *, seconds: float, warmup: float) -> Sample:
        """Clients sending back to back for ``warmup`` + ``seconds``; the answers that
        arrive in the last ``seconds`` are measured (steady state: no ramp-up, no drain),
        and so is the CPU time the server's process tree spends meanwhile; every answer's
        status is counted. Returns once the last answer is in, so the next measurement finds
        the machine idle."""
        sample = Sample(wall=seconds)
        connector = aiohttp.TCPConnector(limit=phase.concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            self.url, headers=self.headers, connector=connector, timeout=timeout
        ) as session:
            if phase.kind == "cache":  # the first call is the miss that fills the cache
                path, form, _ = self.body("cache")
                async with session.post(path, data=form) as resp:
                    await resp.read()
            measured_from = time.perf_counter() + warmup
            until = measured_from + seconds

            async def client() -> None:
                while time.perf_counter() < until:
                    path, form, n = self.body(phase.kind)
                    sent = time.perf_counter()
                    async with session.post(path, data=form) as resp:
                        body = await resp.read()
                    done = time.perf_counter()
                    sample.add(resp.status, done - sent, n, body, measured_from <= done <= until)

            async def meter() -> None:
                await asyncio.sleep(max(0.0, measured_from - time.perf_counter()))
                started = self.server.cpu_seconds()
                await asyncio.sleep(max(0.0, until - time.perf_counter()))
                sample.cpu_s += self.server.cpu_seconds() - started

            await asyncio.gather(meter(), *(client() for _ in range(phase.concurrency)))
        return sample


@dataclass
class Sample:
    """What the clients saw in one measured stretch; stretches of a phase add up."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    images: int = 0
    wall: float = 0.0
    cpu_s: float = 0.0  # the server's process tree, user + system, while measured

    def add(self, status: int, elapsed: float, images: int, body: bytes, measured: bool) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200 and len(self.errors) < 5:
            self.errors.append(f"{status}: {body[:200]!r}")
        if status == 200 and measured:
            self.latencies.append(elapsed)
            self.images += images

    def extend(self, other: Sample) -> None:
        self.latencies += other.latencies
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.errors = (self.errors + other.errors)[:5]
        self.images += other.images
        self.wall += other.wall
        self.cpu_s += other.cpu_s

    def summary(self) -> dict[str, Any]:
        q = np.percentile(self.latencies, [50, 95, 99]) * 1000 if self.latencies else [0.0] * 3
        return {
            "requests": sum(self.statuses.values()),
            "non_2xx": sum(n for s, n in self.statuses.items() if not 200 <= s < 300),
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "errors": self.errors,
            "img_s": round(self.images / self.wall, 1) if self.wall else 0.0,
            # Server CPU per image answered: model and everything around it, all processes.
            "server_core_ms_per_img": round(1000 * self.cpu_s / self.images, 2)
            if self.images
            else 0.0,
            "p50_ms": round(float(q[0]), 2),
            "p95_ms": round(float(q[1]), 2),
            "p99_ms": round(float(q[2]), 2),
        }


def prepare_state(data_dir: Path) -> str:
    """A migrated SQLite database for one server, and an API key for it."""
    from imageiq.backends import open_database
    from imageiq.db.engine import upgrade
    from imageiq.keys import create_key

    engine = open_database(Settings(data_dir=data_dir))
    upgrade(engine)
    key, _ = create_key(engine, name="bench", scopes=["classify"], pepper=b"")
    engine.dispose()
    return key


def server_state(
    model: RegisteredModel, workdir: Path, **settings: str
) -> tuple[dict[str, str], Path, str]:
    """A server's environment (its model, a state directory of its own, ``settings``), that
    directory with a migrated database, and an API key for it."""
    data_dir = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    key = prepare_state(data_dir)
    env = {
        **os.environ,
        "IMAGEIQ_MODELS": model.tag,
        "IMAGEIQ_DATA_DIR": str(data_dir),
        "IMAGEIQ_LOG_FORMAT": "json",
        # The load comes from one key, far above any client's fair share.
        "IMAGEIQ_RATE_LIMIT_PER_MINUTE": "0",
        **settings,
    }
    return env, data_dir, key


def serve(
    model: RegisteredModel,
    *,
    schedule: list[tuple[bool, Phase]],
    seconds: float,
    workdir: Path,
) -> None:
    """One server per batching setting in ``schedule``, all up at once (an idle one costs
    next to nothing), and the phases run in the schedule's order: batching on and off are
    measured a few seconds apart, not minutes, on a machine whose speed drifts."""
    with contextlib.ExitStack() as servers:
        loads: dict[bool, Load] = {}
        for batching in dict.fromkeys(b for b, _ in schedule):
            # Without batching: batches of one; with it, the service's default.
            env, data_dir, key = server_state(
                model, workdir, **({} if batching else {"IMAGEIQ_MAX_BATCH_SIZE": "1"})
            )
            server = servers.enter_context(serving(env, data_dir / "server.log"))
            loads[batching] = Load(
                server, key, small=jpeg(photo(224, 224)), large=jpeg(photo(4000, 3000))
            )
        for step in paired(schedule):
            samples = {batching: Sample() for batching, _ in step}
            order = stretches(step)
            slices = len(order) // len(step)
            for batching, phase in order:
                samples[batching].extend(
                    run_stretch(loads[batching], phase, seconds=seconds, slices=slices)
                )
            for batching, phase in step:
                phase.result = samples[batching].summary()
                print(f"  served {model.tag} batching={batching} {phase}", file=sys.stderr)


FRONTEND_CONCURRENCY = (16, 64)


def frontend_capacity(model: RegisteredModel, *, seconds: float, workdir: Path) -> dict[str, Any]:
    """What the request path delivers with the forward pass skipped
    (load-tests/frontend_service.py): requests/s into the model's queue, and the server's
    CPU per request outside the model, from its own process tree. Not compiled (there is
    no forward pass to compile); everything else as served."""
    env, data_dir, key = server_state(model, workdir, IMAGEIQ_COMPILE="false")
    phases = [Phase(f"forward skipped, c={c}", c) for c in FRONTEND_CONCURRENCY]
    with serving(
        env,
        data_dir / "server.log",
        service="frontend_service:ImageClassifier",
        working_dir=ROOT / "load-tests",
    ) as server:
        load = Load(server, key, small=jpeg(photo(224, 224)), large=jpeg(photo(4000, 3000)))
        for phase in phases:
            sample = asyncio.run(load.run(phase, seconds=seconds, warmup=min(2.0, seconds / 4)))
            phase.result = sample.summary()
            print(f"  front end {phase}", file=sys.stderr)
    return {"front_processes": 1, "phases": [asdict(p) for p in phases]}


# The front processes' scaling: IMAGEIQ_MODEL_PROCESS with 1 and 2 fronts (and the
# single-process layout beside them), the forward pass skipped in the model process, loaded by
# wrk: a C load generator, so the Python client does not take the core the second front needs.
FRONT_PROCESSES = (1, 2)
FRONT_CLIENTS = 32
_WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BENCH_BOUNDARY")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"requests\\": %d, \\"us\\": %d, \\"errors\\": %d, \\"non2xx\\": %d, "
    .. "\\"p50_us\\": %d, \\"p99_us\\": %d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url: str, key: str, body: Path, *, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections posting ``body`` (one multipart JPEG) to /v1/classify for
    ``seconds``, from one wrk thread: requests/s, p50/p99 and the failures."""
    script = body.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT)
    out = subprocess.run(
        [
            *("wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s"),
            *("--timeout", "30s", "-s", str(script), f"{url}/v1/classify"),
        ],
        env={
            **os.environ,
            "BENCH_BODY": str(body),
            "BENCH_BOUNDARY": BOUNDARY,
            "BENCH_KEY": key,
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    r = json.loads(line.removeprefix("BENCH "))
    return {
        "requests": r["requests"],
        "req_per_s": round(r["requests"] / (r["us"] / 1e6), 1),
        "p50_ms": round(r["p50_us"] / 1000, 2),
        "p99_ms": round(r["p99_us"] / 1000, 2),
        "failed": r["errors"] + r["non2xx"],
    }


BOUNDARY = "imageiq-bench-boundary"


def multipart(image: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def front_scaling(model: RegisteredModel, *, seconds: float, workdir: Path) -> dict[str, Any]:
    """Requests/s the front processes deliver to the model process, forward skipped, with
    1 and 2 fronts, and the single-process layout for comparison; the server's CPU per
    request from its process tree (the model process included). The cache is off, so
    every request is hashed, decoded, prepared and handed over."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (Debian package `wrk`)"}
    body = Path(tempfile.mkdtemp(prefix="wrk-", dir=workdir)) / "body.bin"
    body.write_bytes(multipart(jpeg(photo(224, 224))))
    layouts: list[tuple[str, int]] = [("single process", 0)] + [
        (f"{n} front{'s' if n > 1 else ''} + model process", n) for n in FRONT_PROCESSES
    ]
    rows = []
    for name, fronts in layouts:
        env, data_dir, key = server_state(
            model, workdir, IMAGEIQ_COMPILE="false", IMAGEIQ_CACHE_TTL_S="0"
        )
        with contextlib.ExitStack() as stack:
            extra: list[int] = []
            if fronts:
                socket_path = data_dir / "model.sock"
                log = stack.enter_context((data_dir / "model-process.log").open("wb"))
                proc = subprocess.Popen(
                    [
                        *(sys.executable, str(ROOT / "load-tests" / "frontend_model_process.py")),
                        *("--socket", str(socket_path)),
                    ],
                    cwd=ROOT / "load-tests",
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                stack.callback(proc.wait)
                stack.callback(proc.terminate)
                extra.append(proc.pid)
                env = {
                    **env,
                    "IMAGEIQ_MODEL_PROCESS": "true",
                    "IMAGEIQ_MODEL_SOCKET": str(socket_path),
                    "IMAGEIQ_FRONT_WORKERS": str(fronts),
                }
            server = stack.enter_context(
                serving(
                    env,
                    data_dir / "server.log",
                    service="frontend_service:ImageClassifier",
                    working_dir=ROOT / "load-tests",
                )
            )

            pids = [server.pid, *extra]
            wrk(server.url, key, body, clients=FRONT_CLIENTS, seconds=2)  # warm-up
            cpu_before = sum(map(tree_cpu_seconds, pids))
            result = wrk(server.url, key, body, clients=FRONT_CLIENTS, seconds=seconds)
            cpu_s = sum(map(tree_cpu_seconds, pids)) - cpu_before
        result["server_core_ms_per_request"] = round(1000 * cpu_s / max(1, result["requests"]), 2)
        rows.append({"layout": name, "front_processes": fronts or 1, **result})
        print(f"  front scaling {name}: {result}", file=sys.stderr)
    by = {r["layout"]: r for r in rows if "model process" in r["layout"]}
    one, two = (by[n]["req_per_s"] for n in list(by)[:2])
    return {"clients": FRONT_CLIENTS, "rows": rows, "two_vs_one": round(two / one, 2)}


LAYOUTS = {
    "single process": {},
    "2 fronts + model process": {"IMAGEIQ_MODEL_PROCESS": "true", "IMAGEIQ_FRONT_WORKERS": "2"},
}
LAYOUT_CONCURRENCY = (1, 16)


def layout_comparison(
    model: RegisteredModel, *, seconds: float, workdir: Path
) -> dict[str, list[dict[str, Any]]]:
    """The model served (forward pass and all) in each process layout, both servers up at
    once and their phases taking turns in stretches (A B B A ...), c=1 and c=16: which
    layout is faster on this machine (the CPU default follows it)."""
    with contextlib.ExitStack() as servers:
        loads: dict[str, Load] = {}
        for name, settings in LAYOUTS.items():
            env, data_dir, key = server_state(model, workdir, **settings)
            server = servers.enter_context(serving(env, data_dir / "server.log"))
            loads[name] = Load(server, key, small=jpeg(photo(224, 224)), large=b"")
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in LAYOUTS}
        for c in LAYOUT_CONCURRENCY:
            samples = {name: Sample() for name in LAYOUTS}
            phase = Phase(f"c={c}", c)
            for name in abba(list(LAYOUTS)):
                samples[name].extend(
                    run_stretch(loads[name], phase, seconds=seconds, slices=SLICES)
                )
            for name in LAYOUTS:
                result = samples[name].summary()
                out[name].append({"name": phase.name, "result": result})
                print(f"  layout {name} {phase.name}: {result['img_s']} img/s", file=sys.stderr)
    return out


def paired(schedule: list[tuple[bool, Phase]]) -> list[list[tuple[bool, Phase]]]:
    """The schedule in steps: a phase and its twin of the other batching setting (the same
    name, next to it in the schedule) make one step; any other phase is a step alone."""
    steps: list[list[tuple[bool, Phase]]] = []
    for batching, phase in schedule:
        last = steps[-1] if steps else []
        if len(last) == 1 and last[0][1].name == phase.name and last[0][0] != batching:
            last.append((batching, phase))
        else:
            steps.append([(batching, phase)])
    return steps


def stretches(step: list[tuple[bool, Phase]]) -> list[tuple[bool, Phase]]:
    """The order a step's phases run in. A phase alone runs once. A phase of batching on
    and its twin with batching off run in SLICES stretches each, A B, B A, B A, A B: a
    drift of this machine's speed within the pair falls on both alike (one stretch each
    would hand it to one of them), and the pair ends as it began, so the batching
    server's c=64 still comes right before its c=1 after c=64 (see interleave)."""
    if len(step) == 1:
        return list(step)
    return abba(step)


T = TypeVar("T")


def abba(items: list[T]) -> list[T]:
    """``items`` in SLICES stretches each, in the order A B, B A, B A, A B (see stretches)."""
    return [item for i in range(SLICES) for item in (items if i % 4 in (0, 3) else items[::-1])]


def run_stretch(load: Load, phase: Phase, *, seconds: float, slices: int) -> Sample:
    """One of a phase's ``slices`` stretches: its share of ``seconds`` and of the warm-up."""
    return asyncio.run(
        load.run(phase, seconds=seconds / slices, warmup=min(2.0, seconds / 4) / slices)
    )


def model_schedule(name: str) -> dict[bool, list[Phase]]:
    """Each batching setting's phases, in the order of its report: c=1, 4, 16, 64, then 1
    again right after 64; for ResNet-50 with batching also the large JPEG, the cache hit and
    the batch endpoint. int8 is measured with batching only (its best case)."""
    settings = [True] if name == "resnet50 int8" else [True, False]
    phases: dict[bool, list[Phase]] = {}
    for batching in settings:
        phases[batching] = [Phase(f"c={c}", c) for c in CONCURRENCY]
        phases[batching].append(Phase(f"c=1 after c={CONCURRENCY[-1]}", 1))
    if name == "resnet50":
        phases[True] += [
            Phase("large 4000x3000, c=1", 1, "large"),
            Phase("cache hit, c=1", 1, "cache"),
        ]
    if name.startswith("resnet50"):
        phases[True].append(Phase(f"batch endpoint, {BULK_IMAGES} images, c=4", 4, "bulk"))
    return phases


def interleave(phases: dict[bool, list[Phase]]) -> list[tuple[bool, Phase]]:
    """On and off taking turns at each concurrency; around the burst the order is off c=64,
    on c=64, on c=1 after c=64, off c=1 after: the batching server's c=1 comes straight after
    its own burst, which is the case that catches a queue that keeps waiting."""
    on, off = phases.get(True, []), phases.get(False, [])
    burst = len(CONCURRENCY) - 1  # index of the c=64 phase
    order: list[tuple[bool, Phase]] = []
    for i in range(burst):
        order += [(True, on[i])] + ([(False, off[i])] if off else [])
    if off:
        order.append((False, off[burst]))
    order += [(True, on[burst]), (True, on[burst + 1])]
    if off:
        order.append((False, off[burst + 1]))
    order += [(True, p) for p in on[burst + 2 :]]
    return order


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per served phase")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--quick", action="store_true", help="ResNet-50 only, short phases")
    parser.add_argument("--retrain", action="store_true", help="train and quantize again")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and plot")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the report into docs/performance.md",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.ceiling_seconds = min(args.seconds, 3.0), min(args.ceiling_seconds, 1.0)

    threads = Settings().torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    started = time.time()
    models = prepare_models(retrain=args.retrain, quick=args.quick)
    results: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": Settings().model_dump(
            include={"precision", "channels_last", "compile", "max_batch_size", "jpeg_draft"}
        ),
        "seconds_per_phase": args.seconds,
        "models": {
            name: {"tag": m.tag, "architecture": m.card.architecture, "metrics": m.card.metrics}
            for name, m in models.items()
        },
        "ceiling": {},
        "served": [],
    }
    with tempfile.TemporaryDirectory(prefix="imageiq-bench-") as tmp:
        for name, model in models.items():
            # Each model's ceiling right before and right after its servers (see Ceiling).
            ceiling = Ceiling(model, seconds=args.ceiling_seconds, threads=threads)
            phases = model_schedule(name)
            try:
                ceiling.measure()
                serve(model, schedule=interleave(phases), seconds=args.seconds, workdir=Path(tmp))
                ceiling.measure()
            finally:
                ceiling.close()
            results["ceiling"][name] = ceiling.result()
            if name == "resnet50":
                results["frontend"] = frontend_capacity(
                    model, seconds=args.seconds, workdir=Path(tmp)
                )
                results["front_scaling"] = front_scaling(
                    model, seconds=args.seconds, workdir=Path(tmp)
                )
                results["layouts"] = layout_comparison(
                    model, seconds=args.seconds, workdir=Path(tmp)
                )
            for batching, measured in phases.items():
                results["served"].append(
                    {
                        "model": name,
                        "batching": batching,
                        "phases": [asdict(p) for p in measured],
                    }
                )
    results["elapsed_s"] = round(time.time() - started)
    results["targets"] = bench_report.targets(results)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench-gpu" if results["machine"]["gpu"] else "bench-cpu"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    bench_report.plot(results, args.out / f"{stem}.png")
    report = bench_report.markdown(results, plot=f"benchmarks/{stem}.png")
    print(report)
    if args.docs:
        bench_report.write_into(ROOT / "docs" / "performance.md", report)
    failed = [t for t in results["targets"] if not t["ok"]]
    print(f"\n{len(results['targets']) - len(failed)} of {len(results['targets'])} targets met")


if __name__ == "__main__":
    main()
