"""The prediction cache under load: N classify calls of which a share repeats an image
already sent, against a running service; reports the hit ratio and latency of hits and
misses, measured in one run.

    .venv/bin/python load-tests/cache_load.py --url http://127.0.0.1:3000 \\
        --api-key "$(cat .data/demo.key)" --requests 2000 --repeat 0.2 --concurrency 8

Start the service with an empty cache (a fresh Redis, or a fresh process with the in-process
cache), or earlier runs count as hits. Images: every PNG/JPEG under --images (the digits
demo by default); it needs at least requests x (1 - repeat) distinct images.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx


def plan(images: list[Path], requests: int, repeat: float, seed: int) -> list[tuple[Path, bool]]:
    """The order of the calls: fresh images, and repeats of ones sent earlier."""
    rng = random.Random(seed)
    repeats = round(requests * repeat)
    fresh = requests - repeats
    if len(images) < fresh:
        raise SystemExit(f"need {fresh} distinct images, found {len(images)}")
    pool = rng.sample(images, fresh)
    calls: list[tuple[Path, bool]] = [(p, False) for p in pool]
    for _ in range(repeats):  # a repeat goes after a random earlier call of its image
        i = rng.randrange(len(calls))
        calls.insert(rng.randrange(i + 1, len(calls) + 1), (calls[i][0], True))
    return calls


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--images", type=Path, default=Path(".data/digits"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    calls = plan(images, args.requests, args.repeat, args.seed)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    local = threading.local()

    def send(call: tuple[Path, bool]) -> None:
        path, repeated = call
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=args.url, headers=headers, timeout=60)
        data = path.read_bytes()
        started = time.perf_counter()
        resp = local.client.post("/v1/classify", files={"image": (path.name, data)})
        elapsed = (time.perf_counter() - started) * 1000
        cached = resp.json().get("cached") if resp.status_code == 200 else None
        with lock:
            results.append(
                {"status": resp.status_code, "ms": elapsed, "cached": cached, "repeat": repeated}
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(send, calls))
    wall = time.perf_counter() - started
    stats = httpx.get(f"{args.url}/v1/stats", headers=headers, timeout=60).json()

    ok = [r for r in results if r["status"] == 200]
    hits = [r["ms"] for r in ok if r["cached"]]
    misses = [r["ms"] for r in ok if not r["cached"]]
    report = {
        "requests": len(results),
        "concurrency": args.concurrency,
        "repeat_share": args.repeat,
        "non_2xx": len(results) - len(ok),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 1),
        "hit_ratio": round(len(hits) / len(ok), 4) if ok else None,
        "repeats_that_hit": sum(1 for r in ok if r["repeat"] and r["cached"]),
        "repeats": sum(1 for r in results if r["repeat"]),
        "hit_ms": {"p50": percentile(hits, 0.5), "p95": percentile(hits, 0.95)},
        "miss_ms": {"p50": percentile(misses, 0.5), "p95": percentile(misses, 0.95)},
        "all_ms": {"p50": percentile([r["ms"] for r in ok], 0.5)},
        "server_stats": {
            "predictions": stats["predictions"]["total"],
            "cache_hit_ratio": stats["predictions"]["cache_hit_ratio"],
        },
    }
    if hits and misses:
        report["miss_over_hit_p50"] = round(statistics.median(misses) / statistics.median(hits), 1)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
