"""Webhook signatures (Stripe's scheme) and the SSRF guard on callback URLs."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from imageiq.errors import CallbackNotAllowed
from imageiq.jobs.webhooks import backoff_s, check_callback, sign, signature_header, verify


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"type":"job.succeeded"}'
    header = signature_header("whsec_abc", body, now=1_700_000_000)
    expected = hmac.new(b"whsec_abc", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert sign("whsec_abc", 1_700_000_000, body) == expected
    assert verify("whsec_abc", header, body, now=1_700_000_100)


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        ("whsec_other", b'{"type":"job.succeeded"}', 1_700_000_000),  # wrong secret
        ("whsec_abc", b'{"type":"job.failed"}', 1_700_000_000),  # body changed
        ("whsec_abc", b'{"type":"job.succeeded"}', 1_700_000_301),  # too old: a replay
    ],
)
def test_verify_refuses(secret: str, body: bytes, now: int) -> None:
    header = signature_header("whsec_abc", b'{"type":"job.succeeded"}', now=1_700_000_000)
    assert not verify(secret, header, body, now=now)
    assert not verify("whsec_abc", "t=abc,v1=00", body, now=now)


def _resolver(*addresses: str):  # type: ignore[no-untyped-def]
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("http://169.254.169.254/latest/meta-data/", ()),
        ("http://metadata.internal/", ("169.254.169.254",)),
        ("http://rebind.example/", ("93.184.216.34", "10.0.0.1")),  # one bad address is enough
        ("http://[::ffff:169.254.169.254]/", ()),
        ("http://[fd00::1]/", ()),
        ("http://127.0.0.1:8080/", ()),
        ("http://0.0.0.0/", ()),
        ("http://100.64.0.1/", ()),  # carrier-grade NAT
        ("http://224.0.0.1/", ()),
        ("http://user:pw@example.com/", ("93.184.216.34",)),
        ("file:///etc/passwd", ()),
        ("gopher://example.com/", ("93.184.216.34",)),
        ("http:///nohost", ()),
        ("http://unresolvable.example/", ()),
    ],
)
def test_internal_and_odd_callbacks_are_refused(url: str, addresses: tuple[str, ...]) -> None:
    with pytest.raises(CallbackNotAllowed):
        check_callback(url, allowed_networks=[], resolve=_resolver(*addresses))


def test_public_addresses_pass_and_allowed_networks_admit_internal_ones() -> None:
    assert check_callback(
        "https://hooks.example.com/x", allowed_networks=[], resolve=_resolver("93.184.216.34")
    ) == ["93.184.216.34"]
    assert check_callback(
        "http://receiver.svc/x", allowed_networks=["10.0.0.0/8"], resolve=_resolver("10.1.2.3")
    ) == ["10.1.2.3"]
    with pytest.raises(CallbackNotAllowed):
        check_callback("http://127.0.0.2/", allowed_networks=["127.0.0.1/32"])


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff_s(a, cap_s=600) for a in range(7)] == [30, 60, 120, 240, 480, 600, 600]
