"""Benchmark: the v2 inference protocol against /v1 on one server, side by side.

    .venv/bin/python load-tests/bench_v2.py                 # 3 rounds of 96 images a way
    .venv/bin/python load-tests/bench_v2.py --images 32 --rounds 1   # a smoke run

Serves an untrained ResNet-50 (throughput does not depend on the weights; eager fp32, the
cache off, an API key) on 127.0.0.1 and sends the same distinct 224x224 JPEGs, one
image a request from ``--concurrency`` clients, three ways: ``POST /v1/classify``
(multipart), ``POST /v2/models/{name}/infer`` with a BYTES input in JSON (base64), and the
same with the binary extension. The ways take turns, round after round (the best round of
each counts). Reported: images/s, the median latency, the server's CPU per image (its
process tree's user + system time), and each v2 way against /v1. The protocol's cost is
parsing and shaping; the core's work is the same, so the ratios should be near 1.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BENTOML_HOME", str(ROOT / ".bentoml-bench"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from bench import machine, prepare_state  # noqa: E402
from bench_jobs import jpegs, untrained_resnet50  # noqa: E402
from local_server import serving  # noqa: E402

Send = Callable[[httpx.Client, bytes], httpx.Response]


def ways(model: str) -> dict[str, Send]:
    def v1(client: httpx.Client, image: bytes) -> httpx.Response:
        return client.post("/v1/classify", files={"image": ("x.jpg", image)})

    def v2_json(client: httpx.Client, image: bytes) -> httpx.Response:
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode()],
                }
            ],
            "outputs": [{"name": "label", "parameters": {"classification": 5}}],
        }
        return client.post(f"/v2/models/{model}/infer", json=body)

    def v2_binary(client: httpx.Client, image: bytes) -> httpx.Response:
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "parameters": {"binary_data_size": len(image) + 4},
                    }
                ],
                "outputs": [{"name": "label", "parameters": {"classification": 5}}],
            }
        ).encode()
        return client.post(
            f"/v2/models/{model}/infer",
            content=head + len(image).to_bytes(4, "little") + image,
            headers={
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream",
            },
        )

    return {"v1 multipart": v1, "v2 JSON (base64)": v2_json, "v2 binary": v2_binary}


def one_round(
    url: str,
    send: Send,
    images: list[bytes],
    *,
    key: str,
    concurrency: int,
    cpu: Callable[[], float],
) -> dict[str, float]:
    latencies: list[float] = []
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, timeout=120, headers=auth) as client:

        def call(image: bytes) -> None:
            started = time.perf_counter()
            resp = send(client, image)
            if resp.status_code != 200:
                raise SystemExit(f"{resp.status_code}: {resp.text[:300]}")
            latencies.append(time.perf_counter() - started)

        cpu_before, started = cpu(), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(call, images))
        elapsed, cpu_used = time.perf_counter() - started, cpu() - cpu_before
    return {
        "images_per_s": len(images) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "server_cpu_ms_per_image": cpu_used / len(images) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images a way and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args()
    model = untrained_resnet50()
    senders = ways(model.name)
    # Distinct images for every request of every round and way: nothing is answered twice.
    pool = iter(jpegs(args.images * args.rounds * len(senders)))
    env = {
        **os.environ,
        "IMAGEIQ_MODELS": model.tag,
        "IMAGEIQ_CACHE_TTL_S": "0",
        "IMAGEIQ_COMPILE": "false",
        "IMAGEIQ_PRECISION": "fp32",
        "IMAGEIQ_RATE_LIMIT_PER_MINUTE": "0",
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in senders}
    with tempfile.TemporaryDirectory() as tmp:
        env["IMAGEIQ_DATA_DIR"] = str(Path(tmp) / "data")
        key = prepare_state(Path(tmp) / "data")
        with serving(env, Path(tmp) / "server.log") as server:
            warm = next(iter(senders.values()))
            run = functools.partial(
                one_round, server.url, key=key, concurrency=args.concurrency, cpu=server.cpu_seconds
            )
            run(warm, jpegs(16))
            for _ in range(args.rounds):
                for name, send in senders.items():
                    results[name].append(run(send, [next(pool) for _ in range(args.images)]))
    best = {name: max(rounds, key=lambda r: r["images_per_s"]) for name, rounds in results.items()}
    v1 = best["v1 multipart"]
    report: dict[str, Any] = {
        "machine": machine(),
        "model": "resnet50 (untrained), 224 px, eager fp32, cache off",
        "images_per_way_and_round": args.images,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "best": best,
        "vs_v1": {
            name: {
                "throughput": round(r["images_per_s"] / v1["images_per_s"], 3),
                "server_cpu_per_image": round(
                    r["server_cpu_ms_per_image"] / v1["server_cpu_ms_per_image"], 3
                ),
            }
            for name, r in best.items()
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
