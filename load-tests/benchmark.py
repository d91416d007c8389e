"""Serving benchmark: raw in-process model throughput vs the served API, measured in one run.

    .venv/bin/python load-tests/benchmark.py --out docs/benchmarks/cpu.json

Registers an untrained ResNet-50 (224 px; throughput does not depend on the weights) in a
model store of its own (``.bentoml-bench/``), then measures (accuracy is measured by the test
suite on a trained model, not here: an untrained network's outputs say nothing):

1. raw throughput of the model in-process, per inference setting (fp32, bf16 autocast,
   channels-last, torch.compile, ONNX Runtime int8) at batch 1 and 16;
2. decoding + preprocessing of a 4000x3000 JPEG with and without draft mode;
3. the served API (``bentoml serve`` on 127.0.0.1) at concurrency 1, 4 and 16, with
   adaptive batching on and off: images/s and p50/p95/p99 latency.

Everything runs on this machine only, bounded in time and count, and stops by itself; the
server is the one process group it starts and ends. Prints Markdown tables; ``--out``
also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml-bench"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imageiq.architectures import build_model  # noqa: E402
from imageiq.inference import Classifier, InferenceOptions  # noqa: E402
from imageiq.preprocessing import PreprocessConfig  # noqa: E402
from imageiq.registry import ModelCard, RegisteredModel, register_model  # noqa: E402

LABELS = [f"class{i}" for i in range(10)]


def photo(width: int, height: int) -> Image.Image:
    """A real photograph (scikit-learn's sample image), resized: JPEG-realistic content."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize(
        (width, height), Image.Resampling.BICUBIC
    )


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def register(arch: str) -> RegisteredModel:
    torch.manual_seed(0)
    net = build_model(arch=arch, num_classes=len(LABELS))
    card = ModelCard(
        architecture=arch,
        labels=LABELS,
        preprocessing=PreprocessConfig(resize_size=256, crop_size=224),
    )
    return register_model(net, card, name=f"bench-{arch}")


def throughput(fn, batch: torch.Tensor, *, seconds: float) -> float:
    for _ in range(2):
        fn(batch)
    n, started = 0, time.perf_counter()
    while True:
        fn(batch)
        n += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and n >= 3:
            return n * len(batch) / elapsed


def bench_raw(
    model: RegisteredModel, *, seconds: float, compile_: bool
) -> tuple[list[dict], RegisteredModel | None]:
    settings = [
        ("fp32", InferenceOptions()),
        ("fp32 + channels_last", InferenceOptions(channels_last=True)),
        ("bf16", InferenceOptions(precision="bf16")),
        ("bf16 + channels_last", InferenceOptions(precision="bf16", channels_last=True)),
    ]
    if compile_:
        settings.append(
            (
                "bf16 + channels_last + compile",
                InferenceOptions(precision="bf16", channels_last=True, compile=True),
            )
        )
    rows = []
    probe = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8)
    for name, options in settings:
        classifier = Classifier.load(model.tag, options=options)
        started = time.perf_counter()
        classifier.predict_proba(probe[:1])
        first = time.perf_counter() - started
        row: dict = {"setting": name, "first_call_s": round(first, 2)}
        for size in (1, 16):
            row[f"batch{size}_img_s"] = round(
                throughput(classifier.predict_proba, probe[:size], seconds=seconds), 1
            )
        rows.append(row)
        print(f"  raw {name}: {row}", file=sys.stderr)
    int8_rows, int8_model = bench_int8(model, probe, seconds=seconds)
    return rows + int8_rows, int8_model


def bench_int8(
    model: RegisteredModel, probe: torch.Tensor, *, seconds: float
) -> tuple[list[dict], RegisteredModel]:
    from imageiq import onnx_int8

    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(LABELS[:2]):  # calibration images: real photo crops
            (Path(tmp) / label).mkdir()
            for j in range(16):
                crop = photo(640, 480).crop((j * 10, i * 40, j * 10 + 300, i * 40 + 300))
                crop.save(Path(tmp) / label / f"{j}.jpg")
        started = time.perf_counter()
        quantized = onnx_int8.quantize_model(
            tag=model.tag, data=Path(tmp), max_accuracy_drop=2.0, name=f"{model.name}-int8"
        )
        quantize_s = time.perf_counter() - started
    runtime = onnx_int8.OnnxInt8Runtime.load(quantized, threads=torch.get_num_threads())
    transform = Classifier.load(model.tag).transform

    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return runtime.predict_proba(transform.normalize(batch))

    row: dict = {"setting": "onnxruntime int8 (static, QDQ)", "first_call_s": round(quantize_s, 1)}
    for size in (1, 16):
        row[f"batch{size}_img_s"] = round(throughput(run, probe[:size], seconds=seconds), 1)
    print(f"  raw int8: {row}", file=sys.stderr)
    return [row], quantized


def bench_decode(model: RegisteredModel) -> dict:
    classifier = Classifier.load(model.tag)
    data = jpeg(photo(4000, 3000))
    result: dict = {"jpeg_bytes": len(data), "size": "4000x3000"}
    for draft in (False, True):
        times = []
        for _ in range(10):
            started = time.perf_counter()
            decoded = classifier.decode(data, max_pixels=50_000_000, draft=draft)
            classifier.prepare(decoded.image)
            times.append(time.perf_counter() - started)
        key = "draft" if draft else "full"
        result[f"{key}_ms_median"] = round(statistics.median(times) * 1000, 1)
        result[f"{key}_decoded_size"] = "x".join(map(str, decoded.image.size))
    full = classifier.prepare(classifier.decode(data, max_pixels=50_000_000, draft=False).image)
    drafted = classifier.prepare(classifier.decode(data, max_pixels=50_000_000).image)
    result["speedup"] = round(result["full_ms_median"] / result["draft_ms_median"], 2)
    result["mean_abs_pixel_diff"] = round(float((full.float() - drafted.float()).abs().mean()), 3)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_served(
    model: RegisteredModel, *, env: dict[str, str], requests: int, log: Path
) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = prepare_state(log.parent / f"state-{port}")
    env = {
        "IMAGEIQ_DATA_DIR": str(log.parent / f"state-{port}"),
        # The same image is sent again and again: measure the model, not the cache.
        "IMAGEIQ_CACHE_TTL_S": "0",
        "IMAGEIQ_RATE_LIMIT_PER_MINUTE": "0",
        **env,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bentoml", "serve", "bentos.service:ImageClassifier"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            cwd=ROOT,
            env={**os.environ, "IMAGEIQ_MODELS": model.tag, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rows = []
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {log}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        data = jpeg(photo(640, 480))
        for concurrency in (1, 4, 16):
            rows.append(load(url, data, key, concurrency=concurrency, requests=requests))
            print(f"  served {env}: {rows[-1]}", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return rows


def prepare_state(data_dir: Path) -> str:
    """A migrated SQLite database for one server, and an API key for it."""
    from imageiq.backends import open_database
    from imageiq.db.engine import upgrade
    from imageiq.keys import create_key
    from imageiq.settings import Settings

    engine = open_database(Settings(data_dir=data_dir))
    upgrade(engine)
    key, _ = create_key(engine, name="benchmark", scopes=["classify"], pepper=b"")
    engine.dispose()
    return key


def load(url: str, data: bytes, key: str, *, concurrency: int, requests: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.Client(base_url=url, timeout=120, headers=headers) for _ in range(concurrency)]

    def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        resp = clients[i % concurrency].post("/v1/classify", files={"image": ("p.jpg", data)})
        return time.perf_counter() - started, resp.status_code

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # warm-up: connections, the optimizer
        started = time.perf_counter()
        results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    for client in clients:
        client.close()
    latencies = sorted(t for t, _ in results)
    ok = sum(1 for _, status in results if status == 200)
    q = np.percentile(latencies, [50, 95, 99]) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": ok,
        "img_s": round(ok / wall, 1),
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "p99_ms": round(float(q[2]), 1),
    }


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}", "", "Raw model, in-process (images/s):", ""]
    lines += ["| setting | batch 1 | batch 16 | first call (or quantization) s |"]
    lines += ["|---|---:|---:|---:|"]
    for r in results["raw"]:
        lines.append(
            f"| {r['setting']} | {r['batch1_img_s']} | {r['batch16_img_s']} | {r['first_call_s']} |"
        )
    d = results["decode"]
    lines += [
        "",
        f"Decode + preprocess of a {d['size']} JPEG ({d['jpeg_bytes']} bytes): "
        f"{d['full_ms_median']} ms full, {d['draft_ms_median']} ms with draft "
        f"(decoded at {d['draft_decoded_size']}), x{d['speedup']}; mean |pixel diff| of the "
        f"224x224 input {d['mean_abs_pixel_diff']} / 255.",
        "",
        f"Served (`POST /v1/classify`, a 640x480 JPEG, {results['served_setting']}):",
        "",
        "| batching | concurrency | images/s | served / raw batch 16 | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    raw = results["raw_reference_img_s"]
    int8_raw = next((r["batch16_img_s"] for r in results["raw"] if "int8" in r["setting"]), raw)
    for mode, rows in results["served"].items():
        for r in rows:
            reference = int8_raw if "int8" in mode else raw
            lines.append(
                f"| {mode} | {r['concurrency']} | {r['img_s']} | {r['img_s'] / reference:.2f} | "
                f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--seconds", type=float, default=4.0, help="per raw measurement")
    parser.add_argument("--requests", type=int, default=96, help="per served measurement")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = register(args.arch)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
        "model": f"{args.arch} 224 px",
    }
    results["raw"], int8_model = bench_raw(model, seconds=args.seconds, compile_=args.compile)
    results["decode"] = bench_decode(model)
    served_env = {
        "IMAGEIQ_PRECISION": args.precision,
        "IMAGEIQ_CHANNELS_LAST": str(args.channels_last).lower(),
        "IMAGEIQ_LOG_FORMAT": "json",
    }
    setting = args.precision + (" + channels_last" if args.channels_last else "")
    results["served_setting"] = setting
    results["raw_reference_img_s"] = next(
        r["batch16_img_s"] for r in results["raw"] if r["setting"] == setting
    )
    results["served"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, size in (("on (max 16)", "16"), ("off", "1")):
            results["served"][mode] = bench_served(
                model,
                env={**served_env, "IMAGEIQ_MAX_BATCH_SIZE": size},
                requests=args.requests,
                log=Path(tmp) / f"server-{size}.log",
            )
        if int8_model is not None:
            results["served"]["on (max 16), int8 version"] = bench_served(
                int8_model,
                env={**served_env, "IMAGEIQ_MAX_BATCH_SIZE": "16"},
                requests=args.requests,
                log=Path(tmp) / "server-int8.log",
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
