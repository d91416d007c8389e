"""What a right answer looks like, and the gate that decides whether a load run passed.

Pure functions (no locust): each check returns what is wrong with a response, or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from load_data import Sample


@dataclass(frozen=True)
class Asked:
    """What a classify request asked for."""

    top_k: int
    min_confidence: float = 0.0


def prediction_problem(
    body: Any, sample: Sample, asked: Asked, *, labels: list[str], with_model: bool = True
) -> str | None:
    """A /v1/classify answer (or one result of a batch, ``with_model=False``) for ``sample``."""
    if not isinstance(body, dict):
        return f"not a JSON object: {str(body)[:200]}"
    if with_model:
        model = body.get("model")
        if not (isinstance(model, dict) and model.get("name") and model.get("version")):
            return f"no model name and version: {model!r}"
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return f"no predictions list: {predictions!r}"
    scores = []
    for p in predictions:
        if not isinstance(p, dict) or p.get("label") not in labels:
            return f"a label the model does not have: {p!r}"
        score = p.get("score")
        if not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
            return f"a score outside [0, 1]: {p!r}"
        if score < asked.min_confidence:
            return f"a score under min_confidence={asked.min_confidence}: {p!r}"
        scores.append(score)
    if scores != sorted(scores, reverse=True):
        return f"predictions not best first: {scores}"
    if sum(scores) > 1.0 + 1e-3:
        return f"softmax scores add up to {sum(scores):.4f} > 1"
    most = min(asked.top_k, len(labels))
    if len(predictions) > most or (asked.min_confidence == 0.0 and len(predictions) != most):
        return f"{len(predictions)} predictions for top_k={asked.top_k} ({len(labels)} labels)"
    return _image_problem(body, sample)


def _image_problem(body: dict[str, Any], sample: Sample) -> str | None:
    image = body.get("image")
    if not isinstance(image, dict):
        return f"no image facts: {image!r}"
    expected = {
        "sha256": sample.sha256,
        "format": sample.format,
        "width": sample.width,
        "height": sample.height,
        "bytes": len(sample.data),
    }
    got = {k: image.get(k) for k in expected}
    if got != expected:
        return f"image facts {got} for {sample.name}, expected {expected}"
    cached, batch_size = body.get("cached"), body.get("batch_size")
    if not isinstance(cached, bool) or not isinstance(batch_size, int):
        return f"cached {cached!r} and batch_size {batch_size!r} missing"
    if (batch_size == 0) != cached:
        return f"batch_size {batch_size} with cached={cached}"
    if not isinstance(body.get("timing_ms"), dict):
        return "no timing_ms"
    return None


def batch_problem(
    body: Any, samples: list[Sample | None], asked: Asked, *, labels: list[str]
) -> str | None:
    """A /v1/classify/batch answer; ``None`` in ``samples`` marks an item sent as text that
    must come back as that item's 415 ``unsupported_image_format``."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        return f"no results list: {str(body)[:200]}"
    model = body.get("model")
    if not (isinstance(model, dict) and model.get("name") and model.get("version")):
        return f"no model name and version: {model!r}"
    results = body["results"]
    if len(results) != len(samples):
        return f"{len(results)} results for {len(samples)} images"
    bad = sum(1 for s in samples if s is None)
    if (body.get("succeeded"), body.get("failed")) != (len(samples) - bad, bad):
        return (
            f"succeeded {body.get('succeeded')}, failed {body.get('failed')}: expected {bad} failed"
        )
    for i, (result, sample) in enumerate(zip(results, samples, strict=True)):
        if not isinstance(result, dict) or result.get("index") != i:
            return f"result {i} out of order: {str(result)[:200]}"
        if sample is None:
            error = result.get("error") or {}
            if (error.get("status"), error.get("code")) != (415, "unsupported_image_format"):
                return f"result {i} (not an image): {result!r}"
            continue
        if "error" in result:
            return f"result {i} failed: {result['error']!r}"
        problem = prediction_problem(result, sample, asked, labels=labels, with_model=False)
        if problem:
            return f"result {i}: {problem}"
    return None


def error_problem(
    status: int, body: Any, headers: Mapping[str, str], *, expected: tuple[int, str]
) -> str | None:
    """A refusal: the expected 4xx status, and the error envelope with the expected code. A
    bad key may also meet the address's failed-authentication throttle (429
    ``auth_throttled``): the load generator sends them all from one address."""
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    throttled = expected[0] == 401 and (status, code) == (429, "auth_throttled")
    if (status, code) != expected and not throttled:
        return f"got {status} {code or str(body)[:200]}, expected {expected[0]} {expected[1]}"
    if headers.get("X-Error-Code") != code or not body["error"].get("request_id"):
        return "no X-Error-Code header or request_id"
    return None


def cache_problem(cached: bool, *, seen_before: bool, expect: str) -> str | None:
    """``expect``: "yes" (the cache is on: an image this user got an answer for is a hit),
    "no" (it is off: never a hit) or "any"."""
    if expect == "yes" and seen_before and not cached:
        return "an image sent before was not served from the cache (cached=false)"
    if expect == "no" and cached:
        return "cached=true although the cache is expected off"
    return None


# --- the gate --------------------------------------------------------------------------------
def gate_problems(
    *,
    requests: int,
    failures: int,
    max_fail_ratio: float,
    per_persona: Mapping[str, int],
    exceptions: int = 0,
) -> list[str]:
    """Why the run failed; empty when it passed. Every persona must have sent requests, no
    locustfile code may have raised, and failures must stay within ``max_fail_ratio``."""
    problems = []
    if requests == 0:
        problems.append("no requests were made")
    elif failures / requests > max_fail_ratio:
        problems.append(
            f"{failures} of {requests} requests failed ({failures / requests:.2%}), "
            f"more than the allowed {max_fail_ratio:.2%}"
        )
    idle = sorted(name for name, count in per_persona.items() if count == 0)
    if idle:
        problems.append(f"personas that made no requests: {', '.join(idle)}")
    if exceptions:
        problems.append(f"{exceptions} exceptions in the locustfile (see the report)")
    return problems
