"""OpenID Connect bearer tokens through HTTP: the shared service (`served`) trusts the test
issuer on loopback (tests/oidc_issuer.py) besides its API keys."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from imageiq.db.schema import AuditEntry, Prediction
from tests.backends import Stack, wait_for
from tests.conftest import Server
from tests.oidc_issuer import Issuer, rsa_key

pytestmark = pytest.mark.slow


def bearer(token: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def image(digits_dir: Path) -> dict[str, Any]:
    return {"image": ("d.png", (digits_dir / "1" / "digit_0001.png").read_bytes())}


def audited(stack: Stack, request_id: str) -> AuditEntry:
    def entry() -> AuditEntry | None:
        with stack.session() as session:
            return session.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == "auth.denied", AuditEntry.client_request_id == request_id
                )
            ).first()

    wait_for(lambda: entry() is not None, 30, f"the denial {request_id} audited")
    found = entry()
    assert found is not None
    return found


def test_a_valid_token_classifies_as_its_subject(
    served: Server, oidc_issuer: Issuer, stack: Stack, digits_dir: Path
) -> None:
    token = oidc_issuer.token(subject="svc-alice", scope="openid imageiq:classify")
    request_id = f"oidc-ok-{uuid.uuid4().hex[:8]}"
    resp = served.post("/v1/classify", files=image(digits_dir), headers=bearer(token, request_id))
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"]
    # Signed by the EC key too.
    ec = oidc_issuer.token(kid="ec-1", subject="svc-alice-ec")
    assert (
        served.post("/v1/classify", files=image(digits_dir), headers=bearer(ec)).status_code == 200
    )

    def recorded() -> str | None:
        with stack.session() as session:
            return session.scalars(
                select(Prediction.api_key_id).where(Prediction.client_request_id == request_id)
            ).first()

    wait_for(lambda: recorded() is not None, 30, "the prediction recorded")
    assert recorded() == "oidc:svc-alice"
    # The token itself is in no log line.
    assert token not in served.log.read_text(errors="replace")


def test_bad_tokens_are_401_with_the_envelope(
    served: Server, oidc_issuer: Issuer, stack: Stack, digits_dir: Path
) -> None:
    now = int(time.time())
    cases = {
        "expired": oidc_issuer.token(subject="svc-mallory", exp=now - 3600),
        "wrong-aud": oidc_issuer.token(subject="svc-mallory", audience="another-api"),
        "wrong-iss": oidc_issuer.token(subject="svc-mallory", issuer="https://evil.example"),
        "unknown-kid": oidc_issuer.token(subject="svc-mallory", kid="k", key=rsa_key()),
        "alg-none": oidc_issuer.unsigned_token(subject="svc-mallory"),
        "hs256-public-key": oidc_issuer.hmac_with_public_key(subject="svc-mallory"),
    }
    tag = uuid.uuid4().hex[:8]
    for name, token in cases.items():
        resp = served.post(
            "/v1/classify", files=image(digits_dir), headers=bearer(token, f"oidc-{name}-{tag}")
        )
        assert resp.status_code == 401, (name, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "unauthorized" and error["request_id"], name
        assert error["message"] and "Traceback" not in error["message"], name
    # Each is in the denial log, under the subject it claimed; the token nowhere.
    for name, token in cases.items():
        entry = audited(stack, f"oidc-{name}-{tag}")
        assert entry.actor == "oidc:svc-mallory", name
        assert entry.detail["status"] == 401 and entry.target == "/v1/classify"
        assert token not in str(entry.detail)
    assert not any(t in served.log.read_text(errors="replace") for t in cases.values())


def test_a_token_without_the_label_scope_is_403_on_label_endpoints(
    served: Server, oidc_issuer: Issuer, stack: Stack
) -> None:
    token = oidc_issuer.token(subject="svc-bob", scope="imageiq:classify")
    request_id = f"oidc-403-{uuid.uuid4().hex[:8]}"
    resp = served.get("/v1/images", headers=bearer(token, request_id))
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "insufficient_scope"
    entry = audited(stack, request_id)
    assert entry.actor == "oidc:svc-bob" and entry.detail["status"] == 403
    # No ImageIQ scope at all: authenticated, refused everywhere.
    bare = oidc_issuer.token(subject="svc-bob", scope="openid profile")
    assert served.get("/v1/models", headers=bearer(bare)).status_code == 403
    labeller = oidc_issuer.token(subject="svc-bob", scope="imageiq:label")
    assert served.get("/v1/images", headers=bearer(labeller)).status_code == 200


def test_the_subject_is_the_rate_limit_identity(served: Server, oidc_issuer: Issuer) -> None:
    # `served` gives subjects 12 a minute, 5 at once: two tokens of one subject share them.
    first, second = (oidc_issuer.token(subject="svc-carol") for _ in range(2))
    statuses = [
        served.get("/v1/models", headers=bearer(token)).status_code for token in (first, second) * 4
    ]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:], statuses
    refused = served.get("/v1/models", headers=bearer(second))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    other = oidc_issuer.token(subject="svc-dave")
    assert served.get("/v1/models", headers=bearer(other)).status_code == 200


def test_api_keys_still_work_beside_tokens(served: Server, digits_dir: Path) -> None:
    assert served.get("/v1/models").status_code == 200
    assert served.post("/v1/classify", files=image(digits_dir)).status_code == 200
    resp = served.get("/v1/models", headers=bearer("iiq_" + "0" * 16 + "_" + "0" * 48))
    assert resp.status_code == 401 and resp.json()["error"]["message"] == "Invalid API key."
