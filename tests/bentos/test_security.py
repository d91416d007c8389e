"""Authentication, scopes, rate limits and hostile identifiers, through HTTP against the
service on PostgreSQL and Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imageiq.db.engine import make_engine
from imageiq.keys import create_key, revoke_key
from tests.backends import Stack
from tests.conftest import Server

pytestmark = pytest.mark.slow

V1 = [
    ("POST", "/v1/classify"),
    ("POST", "/v1/classify/batch"),
    ("GET", "/v1/categories"),
    ("GET", "/v1/models"),
    ("GET", "/v1/images"),
    ("GET", f"/v1/images/{'a' * 64}"),
    ("GET", f"/v1/images/{'a' * 64}/content"),
    ("POST", f"/v1/images/{'a' * 64}/labels"),
    ("DELETE", f"/v1/admin/images/{'a' * 64}"),
    ("GET", "/v1/stats"),
    ("POST", "/v1/admin/models/imageiq-classifier/activate"),
]
HOSTILE = [
    "' OR '1'='1",
    "1; DROP TABLE images; --",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "\\x00",
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "a" * 5000,
    "🙂" * 300,
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "/",
    "",
]


def new_key(stack: Stack, scopes: list[str], rate_limit: int | None = None) -> tuple[str, str]:
    engine = make_engine(stack.postgres.url)
    try:
        key, row = create_key(
            engine, name="t", scopes=scopes, pepper=b"", rate_limit_per_minute=rate_limit
        )
    finally:
        engine.dispose()
    return key, row.id


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def code(resp) -> str:  # type: ignore[no-untyped-def]
    return resp.json()["error"]["code"]


@pytest.mark.parametrize(("method", "path"), V1)
def test_every_v1_endpoint_needs_a_key(served: Server, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer iiq_0000000000000000_" + "0" * 48}):
        resp = served.request(method, path, auth=False, headers=headers)
        assert resp.status_code == 401, (method, path, resp.text)
        assert code(resp) == "unauthorized"


def test_health_and_metrics_need_no_key(served: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert served.get(path, auth=False).status_code == 200


def test_wrong_malformed_and_query_string_keys_are_refused_alike(
    served: Server, stack: Stack, digits_dir: Path
) -> None:
    key, _ = new_key(stack, ["classify"])
    files = {"image": ("d.png", (digits_dir / "1" / "digit_0001.png").read_bytes())}
    assert served.post("/v1/classify", files=files, headers=bearer(key)).status_code == 200
    wrong_secret = key[:-1] + ("0" if key[-1] != "0" else "1")
    unknown_id = "iiq_" + "f" * 16 + key[20:]
    messages = set()
    for header in (
        f"Bearer {wrong_secret}",
        f"Bearer {unknown_id}",
        f"Basic {key}",
        f"Bearer {key} extra",
        "Bearer",
        f"bearer{key}",
        key,
    ):
        resp = served.post("/v1/classify", files=files, headers={"Authorization": header})
        assert resp.status_code == 401, header
        messages.add(resp.json()["error"]["message"])
    # Unknown id and wrong secret get the same answer: nothing says which keys exist.
    assert len(messages - {"Missing API key: send `Authorization: Bearer <key>`."}) == 1
    for name in ("api_key", "key", "token", "access_token"):
        resp = served.post(f"/v1/classify?{name}={key}", files=files, auth=False)
        assert resp.status_code == 401, name


def test_revoked_key_stops_working(served: Server, stack: Stack) -> None:
    key, key_id = new_key(stack, ["classify"])
    assert served.get("/v1/models", headers=bearer(key)).status_code == 200
    engine = make_engine(stack.postgres.url)
    revoke_key(engine, key_id)
    engine.dispose()
    time.sleep(0.7)  # the server trusts a checked key for IMAGEIQ_AUTH_CACHE_TTL_S (0.5 s)
    resp = served.get("/v1/models", headers=bearer(key))
    assert resp.status_code == 401 and code(resp) == "unauthorized"


def test_scopes(served: Server, stack: Stack, digits_dir: Path) -> None:
    classify_only, _ = new_key(stack, ["classify"])
    label_only, _ = new_key(stack, ["label"])
    sha = "b" * 64
    cases = [
        (classify_only, "GET", "/v1/images", 403),
        (classify_only, "POST", f"/v1/images/{sha}/labels", 403),
        (classify_only, "GET", "/v1/stats", 403),
        (label_only, "GET", "/v1/models", 403),
        (label_only, "GET", "/v1/images", 200),
        (label_only, "GET", "/v1/stats", 200),
        (label_only, "DELETE", f"/v1/admin/images/{sha}", 403),
        (label_only, "POST", "/v1/admin/models/imageiq-classifier/activate", 403),
        (classify_only, "DELETE", f"/v1/admin/images/{sha}", 403),
    ]
    for key, method, path, status in cases:
        kwargs = {"json": {"label": "1"}} if path.endswith("labels") else {}
        if path.endswith("activate"):
            kwargs = {"json": {"version": "x"}}
        resp = served.request(method, path, headers=bearer(key), **kwargs)
        assert resp.status_code == status, (method, path, resp.text)
        if status == 403:
            assert code(resp) == "insufficient_scope"
    # A label key may not pretend to be an admin.
    resp = served.post(
        f"/v1/images/{sha}/labels",
        headers=bearer(label_only),
        json={"label": "1", "source": "admin"},
    )
    assert resp.status_code == 403


def test_hostile_strings_in_every_filter_and_id_are_4xx_never_5xx(served: Server) -> None:
    filters = [
        "label",
        "predicted_label",
        "min_confidence",
        "max_confidence",
        "model",
        "model_version",
        "created_after",
        "created_before",
        "limit",
        "offset",
    ]
    for value in HOSTILE:
        for name in filters:
            resp = served.get("/v1/images", params={name: value})
            assert resp.status_code < 500, (name, value, resp.text)
            printable = not any(ord(c) < 32 for c in value)
            if name in ("label", "predicted_label") and 0 < len(value) <= 255 and printable:
                assert resp.status_code == 200 and resp.json()["items"] == []  # matched nothing
            elif value:
                assert 400 <= resp.status_code < 500, (name, value)
        for name in ("since", "until"):
            resp = served.get("/v1/stats", params={name: value})
            assert resp.status_code < 500 and (resp.status_code == 422 or not value), (name, value)
        # Control characters cannot go into a URL path (httpx refuses them); percent-encoded.
        quoted = "".join(f"%{ord(c):02X}" if ord(c) < 32 else c for c in value)
        quoted = quoted.replace("/", "%2F") or "%20"
        for method, path in (
            ("GET", f"/v1/images/{quoted}"),
            ("GET", f"/v1/images/{quoted}/content"),
            ("DELETE", f"/v1/images/{quoted}"),
            ("POST", f"/v1/images/{quoted}/labels"),
            ("POST", f"/v1/admin/models/{quoted}/activate"),
        ):
            body = {"json": {"label": "1", "version": value}} if method == "POST" else {}
            resp = served.request(method, path, **body)
            assert 400 <= resp.status_code < 500, (method, path, resp.text)
        resp = served.post("/v1/admin/models/imageiq-classifier/activate", json={"version": value})
        assert 400 <= resp.status_code < 500, (value, resp.text)
        resp = served.post(
            f"/v1/images/{'c' * 64}/labels", json={"label": value, "new_label": True}
        )
        assert 400 <= resp.status_code < 500, (value, resp.text)  # unknown image, or bad label
    for edge in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "0000-01-01"):
        for path, name in (("/v1/images", "created_after"), ("/v1/stats", "since")):
            resp = served.get(path, params={name: edge})
            assert 400 <= resp.status_code < 500 or resp.status_code == 200, (edge, resp.text)
    for raw in (  # JSON as a hostile client writes it: lone surrogates are valid JSON escapes
        '{"label": "x\\ud800", "new_label": true}',
        '{"attributes": {"\\ud800": "x"}}',
        '{"attributes": {"shiny": "\\udfff"}}',
        '{"label": 7}',
        '{"label": ["a"]}',
        '{"attributes": "shiny"}',
        '{"label": "1", "extra": 1}',
    ):
        resp = served.post(
            f"/v1/images/{'c' * 64}/labels",
            content=raw.encode(),
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422, (raw, resp.text)
    text = served.get("/metrics", auth=False).text
    assert not [
        line for line in text.splitlines() if 'status="5' in line and not line.endswith(" 0.0")
    ]


def test_rate_limit_is_hit_and_recovers(served: Server, stack: Stack) -> None:
    # One every 5 s, 5 at once: slow enough that a loaded machine's slow requests do not
    # refill the bucket between them.
    key, _ = new_key(stack, ["classify"], rate_limit=12)
    statuses = [served.get("/v1/models", headers=bearer(key)).status_code for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    refused = served.get("/v1/models", headers=bearer(key))
    assert refused.status_code == 429 and code(refused) == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 5
    time.sleep(retry_after)
    assert served.get("/v1/models", headers=bearer(key)).status_code == 200
    # Another key is not affected.
    other, _ = new_key(stack, ["classify"], rate_limit=120)
    assert served.get("/v1/models", headers=bearer(other)).status_code == 200
