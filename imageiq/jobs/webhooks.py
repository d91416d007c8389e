"""Job webhooks: where they may go (SSRF), how they are signed, one delivery attempt.

**Signature** (Stripe's scheme): each POST carries ``ImageIQ-Signature: t=<unix time>,
v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the job's secret>``. A receiver recomputes
it over the raw body, compares in constant time, and refuses a timestamp older than a few
minutes (replays): :func:`verify` does all three. The secret (``whsec_...``) is shown once,
in the answer to the job's creation.

**Where**: only ``http``/``https`` URLs without credentials, whose host resolves only to
public addresses: a private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback, link-local
(169.254/16: cloud metadata services), shared (100.64/10), multicast, reserved or
unspecified address is refused (422 ``callback_not_allowed``) unless a network of
``webhook_allowed_networks`` holds it. The check runs when the job is submitted and again
before every attempt (a name may resolve elsewhere by then), and redirects are never
followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from imageiq import errors

SIGNATURE_HEADER = "ImageIQ-Signature"
EVENT_HEADER = "ImageIQ-Event"
TOLERANCE_S = 300
MAX_URL_LENGTH = 2048

Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, *, now: float | None = None) -> str:
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` within ``tolerance_s``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields.get("t", [""])[0])
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Not global covers private, loopback, link-local, shared (100.64/10), reserved and
    # unspecified; a multicast address may be "global" and is no receiver either.
    return not address.is_global or address.is_multicast


def check_callback(
    url: str, *, allowed_networks: Sequence[str], resolve: Resolver = system_resolver
) -> list[str]:
    """The addresses ``url``'s host resolves to, all admitted; 422
    ``callback_not_allowed`` otherwise (see the module's docstring)."""

    def refuse(why: str) -> errors.CallbackNotAllowed:
        return errors.CallbackNotAllowed(
            f"callback_url is refused: {why}.", details={"callback_url": url[:300]}
        )

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise refuse(f"not a URL ({e})") from e
    if parts.scheme not in ("http", "https"):
        raise refuse("only http and https URLs are called")
    if parts.username is not None or parts.password is not None:
        raise refuse("credentials in the URL are not sent; put a token in its path or query")
    host = parts.hostname
    if not host:
        raise refuse("it names no host")
    try:
        addresses = [host] if _is_ip(host) else list(resolve(host, port))
    except (OSError, UnicodeError) as e:
        raise refuse(f"{host!r} does not resolve ({e})") from e
    if not addresses:
        raise refuse(f"{host!r} does not resolve")
    networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if _internal(address) and not any(address in n for n in networks):
            raise refuse(
                f"{host!r} resolves to {address}, an internal address (private, loopback, "
                "link-local or reserved); IMAGEIQ_WEBHOOK_ALLOWED_NETWORKS can admit it"
            )
    return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def payload(*, event: str, job: dict[str, Any], delivery_id: str) -> bytes:
    return json.dumps(
        {"id": delivery_id, "type": event, "created": int(time.time()), "data": job},
        separators=(",", ":"),
        default=str,
    ).encode()


def deliver(
    url: str,
    *,
    secret: str,
    event: str,
    body: bytes,
    timeout_s: float,
    allowed_networks: Sequence[str],
    resolve: Resolver = system_resolver,
) -> Attempt:
    """One POST; never raises for the receiver's failures (they are the attempt's)."""
    import httpx

    started = time.perf_counter()
    try:
        check_callback(url, allowed_networks=allowed_networks, resolve=resolve)
        response = httpx.post(
            url,
            content=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "ImageIQ-Webhooks/1",
                EVENT_HEADER: event,
                SIGNATURE_HEADER: signature_header(secret, body),
            },
            timeout=timeout_s,
            follow_redirects=False,
        )
        status, error = response.status_code, None
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except errors.CallbackNotAllowed as e:
        status, error = None, e.message
    except Exception as e:  # the receiver's trouble (refused, timeout, TLS): retried
        status, error = None, f"{type(e).__name__}: {e}"
    return Attempt(status, error, (time.perf_counter() - started) * 1000)


def backoff_s(attempt: int, *, cap_s: float) -> float:
    """Seconds before attempt ``attempt + 1``: 30 s doubling, at most ``cap_s``."""
    return float(min(cap_s, 30 * 2 ** min(attempt, 20)))
