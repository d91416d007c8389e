"""Hostile clients against a running ImageIQ: each attack of the hardening review, bounded in
time and count, on 127.0.0.1 only, with a pass/fail verdict per property.

    python load-tests/hostile.py --url http://127.0.0.1:3000 --key iiq_...   # every attack
    python load-tests/hostile.py ... --short --only auth_before_body,slow_bodies

The key needs the classify scope (admin makes more checks possible). Optional facts about
the server sharpen the verdicts: ``--pids`` (its processes, comma-separated: their RSS is
sampled while the memory attack runs) with ``--max-rss-growth`` (the bytes over idle its
budgets allow) and ``--extra-keys`` (more classify keys, so the attack is not just held off
by one key's concurrency cap),
``--metrics-url`` (where its Prometheus metrics are served, when not on the API port),
``--limited-key`` with ``--burst`` and ``--per-minute`` (a key whose rate limit is known:
the per-image charge is checked), ``--per-key`` (``max_in_flight_per_key``) and ``--body-timeout``.

Exit status 0 when every attack that ran passed. ``make test`` runs the short version
against a test server (tests/load/test_hostile.py); the address throttling attack runs last,
since it gets this client's address refused for a while.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Verdict:
    name: str
    passed: bool
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.facts.items())
        mark = "PASS" if self.passed else "FAIL"
        text = f"{mark} {self.name}: {facts}"
        return text + "".join(f"\n     - {p}" for p in self.problems)


@dataclass
class Target:
    url: str
    key: str
    short: bool = False
    pids: list[int] = field(default_factory=list)
    max_rss_growth: int | None = None
    extra_keys: list[str] = field(default_factory=list)
    metrics_url: str | None = None
    limited_key: str | None = None
    burst: int | None = None
    per_minute: int | None = None
    per_key: int = 16
    body_timeout: float = 30.0

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 80

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


# --- raw HTTP, for what httpx will not do (stall, lie, hang up) ------------------------------
def _connect(target: Target, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection((target.host, target.port), timeout=timeout)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_status(sock: socket.socket, timeout: float) -> tuple[int | None, dict[str, str], bytes]:
    """The status line, headers and what arrived of the body within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return None, {}, body
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


# --- the attacks ----------------------------------------------------------------------------
def auth_before_body(target: Target) -> Verdict:
    """(2) A request without a valid key is answered 401 from its headers alone: its body is
    declared large but never sent, and the answer comes at once, closing the connection."""
    v = Verdict("auth_before_body", True)
    cases = [
        ("POST", "/v1/classify/batch", "multipart/form-data; boundary=x", None),
        ("POST", "/v1/classify", "application/json", "iiq_0123456789abcdef_" + "0" * 48),
        ("POST", "/v1/images/" + "a" * 64 + "/labels", "application/json", "not-a-key"),
        ("POST", "/v1/admin/models/x/activate", "application/json", None),
    ]
    for method, path, content_type, key in cases:
        headers = {"Content-Type": content_type, "Content-Length": str(64 * 1024 * 1024)}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        with _connect(target) as sock:
            started = time.monotonic()
            sock.sendall(_head(method, path, headers) + b"x" * 1024)
            status, answer, _ = _read_status(sock, timeout=5)
            took = time.monotonic() - started
        if status != 401:
            v.problems.append(f"{method} {path}: {status} instead of 401 before the body")
        elif answer.get("connection", "").lower() != "close":
            v.problems.append(f"{method} {path}: 401 without Connection: close")
        v.facts[path.split("/")[2]] = f"{status} in {took * 1000:.0f} ms"
    v.passed = not v.problems
    return v


def slow_bodies(target: Target) -> Verdict:
    """(2) Stalled bodies hold nothing for long: past the key's ``per_key`` requests in
    progress the next is refused at once (429), the service keeps answering others, and each
    stalled body gets 408 within the body deadline."""
    v = Verdict("slow_bodies", True)
    stalled: list[socket.socket] = []
    try:
        for _ in range(target.per_key):
            sock = _connect(target, timeout=target.body_timeout + 15)
            headers = {
                **target.auth(),
                "Content-Type": "application/json",
                "Content-Length": "100000",
            }
            sock.sendall(_head("POST", "/v1/classify", headers) + b'{"image_b64": "')
            stalled.append(sock)
        time.sleep(0.5)
        with target.client() as client:
            extra = client.post(
                "/v1/classify", json={"image_b64": ""}, headers=target.auth(), timeout=10
            )
            v.facts["next_request"] = extra.status_code
            if extra.status_code != 429 or _code(extra) != "too_many_concurrent_requests":
                v.problems.append(
                    f"request {target.per_key + 1} of a key with {target.per_key} stalled: "
                    f"{extra.status_code} {_code(extra)}, not 429 too_many_concurrent_requests"
                )
            ready = client.get("/readyz", timeout=10)
            v.facts["readyz_meanwhile"] = ready.status_code
            if ready.status_code != 200:
                v.problems.append(f"/readyz answered {ready.status_code} meanwhile")
        started = time.monotonic()
        statuses: Counter[int | None] = Counter()
        for sock in stalled:
            left = target.body_timeout + 10 - (time.monotonic() - started)
            status, _, body = _read_status(sock, timeout=max(left, 0.1))
            statuses[status] += 1
            if status != 408:
                v.problems.append(f"a stalled body got {status} ({body[:120]!r}), not 408")
        v.facts["stalled_answers"] = dict(statuses)
        v.facts["answered_within_s"] = round(time.monotonic() - started, 1)
    finally:
        for sock in stalled:
            sock.close()
    v.passed = not v.problems
    return v


def client_abort(target: Target) -> Verdict:
    """(10) A client that hangs up mid-upload is counted as 499 client_closed_request, not
    as a 500 internal_error."""
    v = Verdict("client_abort", True)
    before = _series(target, "imageiq_requests_total")
    n = 5 if target.short else 20
    for _ in range(n):
        with _connect(target) as sock:
            headers = {
                **target.auth(),
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": "500000",
            }
            part = (
                b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            sock.sendall(_head("POST", "/v1/classify", headers) + part + b"x" * 5000)
            time.sleep(0.05)
    time.sleep(1.0)
    after = _series(target, "imageiq_requests_total")
    delta = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    server_errors = sum(n for k, n in delta.items() if '"5' in k and 'status="503"' not in k)
    aborts = sum(n for k, n in delta.items() if 'code="client_closed_request"' in k)
    v.facts.update(aborted=n, counted_499=aborts, counted_5xx=server_errors)
    if server_errors:
        v.problems.append(f"{server_errors} of them counted as 5xx: {delta}")
    if aborts < n:
        v.problems.append(f"only {aborts} of {n} counted as client_closed_request: {delta}")
    v.passed = not v.problems
    return v


def memory(target: Target) -> Verdict:
    """(1) Large JSON and multipart batches, JSON of a million tiny values and large-pixel
    images, many at once from several keys: every answer is a success or a clear
    413/429/503 (429 and 503 with Retry-After), and the server's RSS grows over its idle
    level by no more than its budgets (``--max-rss-growth``)."""
    v = Verdict("memory", True)
    keys = [target.key, *target.extra_keys]
    big_png = _png(4000, 4000)  # 16 MP in a few KB: the pixels cost, not the bytes
    b64 = base64.b64encode(_png(64, 64, noise=True)).decode()
    padding = " " * (3_000_000 if target.short else 3_800_000)  # base64 may be line-wrapped

    def json_batch(c: httpx.Client, key: str) -> httpx.Response:
        body = json.dumps({"images_b64": [b64 + padding] * 8}).encode()
        return c.post(
            "/v1/classify/batch",
            content=body,
            headers={**target.auth(key), "Content-Type": "application/json"},
        )

    def tiny_values(c: httpx.Client, key: str) -> httpx.Response:
        return c.post(
            "/v1/classify/batch",
            content=b'{"images_b64": [' + b"1," * 1_500_000 + b"1]}",
            headers={**target.auth(key), "Content-Type": "application/json"},
        )

    def big_pixels(c: httpx.Client, key: str) -> httpx.Response:
        return c.post(
            "/v1/classify",
            files={"image": ("big.png", big_png, "image/png")},
            headers=target.auth(key),
        )

    def multipart_batch(c: httpx.Client, key: str) -> httpx.Response:
        files = [("images", (f"{i}.png", big_png, "image/png")) for i in range(4)]
        return c.post("/v1/classify/batch", files=files, headers=target.auth(key))

    attacks = [json_batch, tiny_values, big_pixels, multipart_batch]
    rounds = 2 if target.short else 6
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    idle = _rss(target.pids)
    with _rss_sampler(target.pids) as peak, ThreadPoolExecutor(max_workers=16) as pool:

        def one(i: int, attack: Callable[[httpx.Client, str], httpx.Response]) -> None:
            name = attack.__name__
            with target.client(timeout=120) as client:
                try:
                    resp = attack(client, keys[i % len(keys)])
                except httpx.HTTPError as e:
                    problems.append(f"{name}: {type(e).__name__}: {e}")
                    return
            statuses[f"{name}:{resp.status_code}"] += 1
            if resp.status_code >= 500 and resp.status_code != 503:
                problems.append(f"{name}: {resp.status_code} {resp.text[:200]}")
            if resp.status_code in (429, 503) and "retry-after" not in resp.headers:
                problems.append(f"{name}: {resp.status_code} without Retry-After")

        jobs = [attack for _ in range(rounds) for attack in attacks for _ in range(4)]
        for f in [pool.submit(one, i, attack) for i, attack in enumerate(jobs)]:
            f.result()
    v.facts["answers"] = dict(sorted(statuses.items()))
    if target.pids:
        growth = peak[0] - idle
        v.facts.update(rss_idle_mib=idle // 2**20, rss_peak_mib=peak[0] // 2**20)
        v.facts["rss_growth_mib"] = growth // 2**20
        if target.max_rss_growth:
            v.facts["budget_mib"] = target.max_rss_growth // 2**20
            if growth > target.max_rss_growth:
                problems.append(
                    f"RSS grew by {growth} bytes over idle, more than the "
                    f"{target.max_rss_growth} the budgets allow"
                )
    v.problems = problems[:10]
    v.passed = not problems
    return v


def rate_cost(target: Target) -> Verdict:
    """(1) A batch costs one per image: with a key of known burst and pace, a batch over the
    burst gets 413, one that empties the bucket passes, and once one image's worth has come
    back a batch of three gets 429 with its cost (3) in the answer and a Retry-After that
    matches its message."""
    v = Verdict("rate_cost", True)
    if not target.limited_key or not target.burst or not target.per_minute:
        v.facts["skipped"] = "no --limited-key/--burst/--per-minute"
        return v
    png = _png(32, 32, noise=True)
    headers = target.auth(target.limited_key)

    def batch(client: httpx.Client, n: int) -> httpx.Response:
        files = [("images", (f"{i}.png", png, "image/png")) for i in range(n)]
        return client.post("/v1/classify/batch", files=files, headers=headers)

    with target.client() as client:
        over = batch(client, target.burst + 1)  # pays 1 before its images are counted
        rest = batch(client, target.burst - 1)  # empties the bucket
        time.sleep(60 / target.per_minute * 1.2)  # one comes back
        three = batch(client, 3)
    v.facts.update(over_burst=over.status_code, emptying=rest.status_code, three=three.status_code)
    if over.status_code != 413 or _code(over) != "too_many_images":
        v.problems.append(f"a batch over the burst got {over.status_code} {over.text[:150]}")
    if rest.status_code != 200:
        v.problems.append(f"a batch of the rest of the burst got {rest.status_code}")
    error = three.json().get("error", {}) if three.status_code == 429 else {}
    details = error.get("details", {})
    v.facts["cost_in_429"] = details.get("cost")
    if three.status_code != 429 or details.get("cost") != 3:
        v.problems.append(
            f"a batch of 3 got {three.status_code} {three.text[:200]}, not 429 cost=3"
        )
    elif f"retry in {three.headers.get('retry-after')} s" not in error.get("message", ""):
        v.problems.append(f"the 429's message and Retry-After disagree: {three.text[:200]}")
    v.passed = not v.problems
    return v


def envelope(target: Target) -> Verdict:
    """(12) Hostile paths and methods stay in the JSON error envelope: a control character
    in an id, an unknown path, a wrong method (405 with Allow); a year for ``since``."""
    v = Verdict("envelope", True)
    with target.client() as client:
        # (method, path, the statuses that are right): any of them, in the envelope.
        checks = [
            ("GET", "/v1/images/a%0Ab", {404, 422}),
            ("GET", "/v1/images/%00", {404, 422}),
            ("GET", "/nowhere%0d%0aX-Injected:%201", {404}),
            ("PUT", "/v1/classify", {405}),
            ("GET", "/v1/stats?since=2024", {422}),
            ("GET", "/v1/images?created_after=2024", {422}),
        ]
        for method, path, statuses in checks:
            resp = client.request(method, path, headers=target.auth())
            ok = resp.status_code in statuses and _code(resp) is not None
            if resp.status_code == 405 and "allow" not in resp.headers:
                ok = False
            if "x-injected" in resp.headers:
                ok = False
            v.facts[f"{method} {path}"] = resp.status_code
            if not ok and resp.status_code != 403:  # 403: a key without the label scope
                v.problems.append(f"{method} {path}: {resp.status_code} {resp.text[:150]!r}")
    v.passed = not v.problems
    return v


def metrics_bounded(target: Target) -> Verdict:
    """(9) Thousands of unique unknown paths and ids do not grow the metrics."""
    v = Verdict("metrics_bounded", True)
    url = target.metrics_url or f"{target.url}/metrics"
    n = 500 if target.short else 3000
    with httpx.Client(timeout=30) as client:
        before = len(client.get(url).content)
        with target.client() as api:
            for i in range(n):
                token = os.urandom(8).hex()
                path = (f"/v1/images/{token}", f"/{token}", f"/v1/{token}/x")[i % 3]
                api.get(path, headers=target.auth())
        started = time.monotonic()
        after = len(client.get(url).content)
        scrape_s = time.monotonic() - started
    v.facts.update(
        paths=n, before_kb=before // 1024, after_kb=after // 1024, scrape_ms=round(scrape_s * 1000)
    )
    if after - before > 64 * 1024:
        v.problems.append(f"/metrics grew by {after - before} bytes after {n} unique paths")
    v.passed = not v.problems
    return v


def auth_throttle(target: Target) -> Verdict:
    """(2) Failed authentications from one address are throttled: after a burst, 429
    auth_throttled with Retry-After, the keys no longer checked."""
    v = Verdict("auth_throttle", True)
    statuses: Counter[str] = Counter()
    retry_after = None
    with target.client() as client:
        for i in range(60 if target.short else 200):
            bad = f"iiq_{os.urandom(8).hex()}_{os.urandom(24).hex()}"
            resp = client.get("/v1/models", headers={"Authorization": f"Bearer {bad}"})
            statuses[f"{resp.status_code}:{_code(resp)}"] += 1
            if resp.status_code == 429:
                retry_after = resp.headers.get("retry-after")
            if resp.status_code not in (401, 429):
                v.problems.append(f"attempt {i}: {resp.status_code}")
        # Claiming another address does not escape it (no proxy is trusted by default).
        spoofed = client.get(
            "/v1/models",
            headers={
                "Authorization": f"Bearer iiq_{os.urandom(8).hex()}_{os.urandom(24).hex()}",
                "X-Forwarded-For": "203.0.113.7",
            },
        )
    v.facts.update(answers=dict(statuses), retry_after=retry_after, spoofed=spoofed.status_code)
    if not statuses.get("429:auth_throttled"):
        v.problems.append("never throttled")
    if statuses.get("429:auth_throttled") and spoofed.status_code != 429:
        v.problems.append(f"X-Forwarded-For escaped the throttle: {spoofed.status_code}")
    v.passed = not v.problems
    return v


ATTACKS: dict[str, Callable[[Target], Verdict]] = {
    "auth_before_body": auth_before_body,
    "envelope": envelope,
    "client_abort": client_abort,
    "rate_cost": rate_cost,
    "memory": memory,
    "slow_bodies": slow_bodies,
    "metrics_bounded": metrics_bounded,
    "auth_throttle": auth_throttle,  # last: it gets this address refused for a while
}


def run(target: Target, only: list[str] | None = None) -> list[Verdict]:
    if target.host not in LOOPBACK:
        raise SystemExit(f"hostile.py only attacks 127.0.0.1, not {target.host}")
    verdicts = []
    for name, attack in ATTACKS.items():
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            verdict = attack(target)
        except Exception as e:  # an attack that crashes is a failure of the service or of it
            verdict = Verdict(name, False, problems=[f"{type(e).__name__}: {e}"])
        verdict.facts["s"] = round(time.monotonic() - started, 1)
        print(verdict.line(), flush=True)
        verdicts.append(verdict)
    return verdicts


# --- helpers --------------------------------------------------------------------------------
def _code(resp: httpx.Response) -> str | None:
    try:
        body = resp.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _png(width: int, height: int, *, noise: bool = False) -> bytes:
    image = (
        Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
        if noise
        else Image.new("RGB", (width, height), (120, 30, 200))
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _series(target: Target, name: str) -> dict[str, float]:
    url = target.metrics_url or f"{target.url}/metrics"
    text = httpx.get(url, timeout=30).text
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            found[labels] = float(value)
    return found


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@contextmanager
def _rss_sampler(pids: list[int]) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss(pids))
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    if pids:
        thread.start()
    try:
        yield peak
    finally:
        stop.set()
        if pids:
            thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--key", default=os.environ.get("IMAGEIQ_API_KEY"), required=False)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--pids", default="")
    parser.add_argument("--max-rss-growth", type=int, help="bytes over idle the budgets allow")
    parser.add_argument("--extra-keys", default="", help="more keys for the memory attack")
    parser.add_argument("--metrics-url")
    parser.add_argument("--limited-key")
    parser.add_argument("--burst", type=int)
    parser.add_argument("--per-minute", type=int)
    parser.add_argument("--per-key", type=int, default=16)
    parser.add_argument("--body-timeout", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the verdicts here")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or IMAGEIQ_API_KEY) is required")
    target = Target(
        url=args.url.rstrip("/"),
        key=args.key,
        short=args.short,
        pids=[int(p) for p in args.pids.split(",") if p],
        max_rss_growth=args.max_rss_growth,
        extra_keys=[k for k in args.extra_keys.split(",") if k],
        metrics_url=args.metrics_url,
        limited_key=args.limited_key,
        burst=args.burst,
        per_minute=args.per_minute,
        per_key=args.per_key,
        body_timeout=args.body_timeout,
    )
    verdicts = run(target, [o for o in args.only.split(",") if o] or None)
    if args.json:
        args.json.write_text(json.dumps([v.__dict__ for v in verdicts], indent=2, default=str))
    failed = [v.name for v in verdicts if not v.passed]
    print(
        f"{len(verdicts) - len(failed)} of {len(verdicts)} properties held"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
