"""A test OpenID Connect issuer on 127.0.0.1: its discovery document and key set (JWKS)
served by ``http.server`` in a thread, and tokens minted with RSA and EC keys made here.

``published`` is the key set the issuer serves now (kid -> private key; a test rotates keys
by changing it), ``down`` makes it answer 503, ``hits`` counts the requests per path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "imageiq-test"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """header.payload, base64url: the signing input of a hand-made token."""
    return b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())


class Issuer:
    def __init__(self) -> None:
        self.keys: dict[str, PrivateKey] = {"rsa-1": rsa_key(), "ec-1": ec_key()}
        self.published: dict[str, PrivateKey] = dict(self.keys)
        self.down = False
        self.hits: Counter[str] = Counter()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits[self.path] += 1
                if issuer.down:
                    self._send(503, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"})
                elif self.path == "/jwks":
                    self._send(200, issuer.jwks())
                else:
                    self._send(404, {})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Issuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self) -> dict[str, str]:
        """The service's settings for this issuer."""
        return {
            "IMAGEIQ_OIDC_ISSUER": self.url,
            "IMAGEIQ_OIDC_AUDIENCE": AUDIENCE,
            "IMAGEIQ_OIDC_ALGORITHMS": "RS256,ES256",
            "IMAGEIQ_OIDC_JWKS_MIN_REFRESH_S": "1",
        }

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.published.items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            else:
                jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def claims(
        self,
        *,
        subject: str | None = "alice",
        scope: str | None = "imageiq:classify",
        audience: str | list[str] = AUDIENCE,
        issuer: str | None = None,
        lifetime_s: float = 300,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.url,
            "aud": audience,
            "iat": now,
            "exp": now + int(lifetime_s),
            "jti": uuid.uuid4().hex,
        }
        if subject is not None:
            claims["sub"] = subject
        if scope is not None:
            claims["scope"] = scope
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        kid: str = "rsa-1",
        key: PrivateKey | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with the key ``kid`` (or ``key``), with :meth:`claims`."""
        signer = key or self.keys.get(kid) or self.keys["rsa-1"]  # an unknown kid: any key
        alg = alg or ("RS256" if isinstance(signer, rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(self.claims(**claims), signer, algorithm=alg, headers={"kid": kid})

    def unsigned_token(self, *, kid: str = "rsa-1", **claims: Any) -> str:
        """``alg: none``, no signature."""
        return unsigned({"alg": "none", "typ": "JWT", "kid": kid}, self.claims(**claims)) + "."

    def hmac_with_public_key(self, *, kid: str = "rsa-1", **claims: Any) -> str:
        """HS256 "signed" with the issuer's public key (PEM) as the secret: the classic
        algorithm confusion (PyJWT refuses to make one, so by hand)."""
        public = self.keys[kid].public_key()
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        head = unsigned({"alg": "HS256", "typ": "JWT", "kid": kid}, self.claims(**claims))
        return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())
