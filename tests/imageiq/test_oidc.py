"""OpenID Connect bearer tokens (imageiq.oidc, imageiq.jwks) against a real issuer on
loopback (tests/oidc_issuer.py): keys minted here, the key set served over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from imageiq import errors
from imageiq.errors import IdentityProviderUnavailable
from imageiq.jwks import KeySet
from imageiq.oidc import SUBJECT_ID, TokenVerifier, bearer_token, subject_id
from imageiq.settings import Settings
from tests.oidc_issuer import AUDIENCE, Issuer, ec_key, rsa_key

JWKS = "/jwks"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    running = Issuer().start()
    yield running
    running.stop()


def verifier(issuer: Issuer, *, min_refresh_s: float = 0.3, **settings: Any) -> TokenVerifier:
    """The service's verifier for ``issuer``, its refresh interval shortened for the tests
    (the setting's floor is 1 s)."""
    settings = {"oidc_algorithms": ["RS256", "ES256"], **settings}
    built = TokenVerifier.from_settings(
        Settings(oidc_issuer=issuer.url, oidc_audience=AUDIENCE, **settings)
    )
    assert built is not None
    built.keys._min_refresh = min_refresh_s
    return built


def refused(check: TokenVerifier, token: str, message: str) -> None:
    with pytest.raises(errors.Unauthorized, match=message) as caught:
        check.verify(token)
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    assert token not in caught.value.message


def test_off_without_an_issuer() -> None:
    assert TokenVerifier.from_settings(Settings()) is None


def test_a_good_token_is_its_subject_with_the_mapped_scopes(issuer: Issuer) -> None:
    check = verifier(issuer)
    principal = check.verify(issuer.token(subject="alice", scope="openid imageiq:classify"))
    assert principal.key_id == "oidc:alice" and principal.name == "alice"
    assert principal.scopes == {"classify"} and principal.rate_limit_per_minute is None
    both = check.verify(
        issuer.token(kid="ec-1", subject="bob", scope="imageiq:classify imageiq:label")
    )
    assert both.key_id == "oidc:bob" and both.scopes == {"classify", "label"}
    admin = check.verify(issuer.token(scope="imageiq:admin"))
    assert admin.allows("label") and admin.allows("classify")
    # Authenticated, but no ImageIQ scope: every endpoint answers 403.
    assert check.verify(issuer.token(scope="openid profile classify")).scopes == frozenset()
    # The discovery document was read once, the key set once.
    assert issuer.hits["/.well-known/openid-configuration"] == 1 and issuer.hits[JWKS] == 1


def test_scopes_from_a_list_claim_or_a_path_and_own_values(issuer: Issuer) -> None:
    roles = verifier(issuer, oidc_scopes_claim="roles", oidc_label_values=["ml-team", "label"])
    principal = roles.verify(issuer.token(scope=None, roles=["ml-team", "imageiq:classify"]))
    assert principal.scopes == {"classify", "label"}
    nested = verifier(issuer, oidc_scopes_claim="realm_access.roles")
    token = issuer.token(scope=None, realm_access={"roles": ["imageiq:admin"]})
    assert nested.verify(token).scopes == {"admin"}
    # A namespaced claim (Auth0) is a URL with dots: the literal name wins.
    url = verifier(issuer, oidc_scopes_claim="https://imageiq.example.com/roles")
    token = issuer.token(scope=None, **{"https://imageiq.example.com/roles": ["imageiq:label"]})
    assert url.verify(token).scopes == {"label"}
    no_admin = verifier(issuer, oidc_admin_values=[])
    assert no_admin.verify(issuer.token(scope="imageiq:admin")).scopes == frozenset()


def test_a_subject_too_long_or_odd_for_the_columns_is_hashed(issuer: Issuer) -> None:
    assert subject_id("auth0|5f1e2d") == "oidc:auth0|5f1e2d"
    for subject in ("x" * 60, "Ann Lee", "ünï", "a\nb"):
        hashed = subject_id(subject)
        assert hashed.startswith("oidc-sha256:") and len(hashed) <= 64
        assert hashed == subject_id(subject) and SUBJECT_ID.fullmatch(hashed)
    assert len(subject_id("x" * 59)) == 64 and SUBJECT_ID.fullmatch(subject_id("x" * 59))
    principal = verifier(issuer).verify(issuer.token(subject="y" * 200))
    assert principal.name == "y" * 200 and principal.key_id == subject_id("y" * 200)


def test_expiry_and_not_before_with_the_leeway(issuer: Issuer) -> None:
    check = verifier(issuer, oidc_leeway_s=60)
    now = int(time.time())
    refused(check, issuer.token(exp=now - 120), "expired")
    refused(check, issuer.token(nbf=now + 300), "not valid yet")
    refused(check, issuer.token(iat=now + 300), "not valid yet")
    # Within the leeway: a clock 30 s apart either way still works.
    assert check.verify(issuer.token(subject="late", exp=now - 30)).key_id == "oidc:late"
    assert check.verify(issuer.token(subject="early", nbf=now + 30, iat=now + 30))
    strict = verifier(issuer, oidc_leeway_s=0)
    refused(strict, issuer.token(exp=now - 30), "expired")


def test_audience_issuer_and_required_claims(issuer: Issuer) -> None:
    check = verifier(issuer)
    refused(check, issuer.token(audience="another-api"), "not meant for this service")
    assert check.verify(issuer.token(audience=["another-api", AUDIENCE]))
    refused(check, issuer.token(issuer="https://evil.example.com"), "another issuer")
    refused(check, issuer.token(subject=None), "no usable 'sub'")
    refused(check, issuer.token(subject=""), "no usable 'sub'")
    refused(check, issuer.token(exp=None), "lacks the 'exp' claim")
    refused(check, issuer.token(audience=None), "lacks the 'aud' claim")
    other = verifier(issuer, oidc_subject_claim="oid")
    assert other.verify(issuer.token(subject=None, oid="8f3c")).key_id == "oidc:8f3c"


def test_alg_none_and_hmac_with_the_public_key_are_refused(issuer: Issuer) -> None:
    check = verifier(issuer)
    refused(check, issuer.unsigned_token(), "algorithm is not accepted")
    refused(check, issuer.hmac_with_public_key(), "algorithm is not accepted")
    refused(check, issuer.hmac_with_public_key(kid="ec-1"), "algorithm is not accepted")
    assert issuer.hits[JWKS] == 0  # refused before any key was looked up


def test_the_algorithm_must_fit_the_key(issuer: Issuer) -> None:
    check = verifier(issuer, oidc_algorithms=["RS256", "ES256", "ES384", "PS256"])
    # An EC token naming the RSA key, a P-384 signature naming the P-256 key.
    refused(check, issuer.token(kid="rsa-1", key=issuer.keys["ec-1"]), "does not fit")
    p384 = ec_key(ec.SECP384R1())
    refused(check, issuer.token(kid="ec-1", key=p384, alg="ES384"), "does not fit")
    # PS256 with the RSA key is a different algorithm on a fitting key: it verifies.
    assert check.verify(issuer.token(kid="rsa-1", alg="PS256"))
    # A key that names its own alg verifies that one only.
    issuer.published = {"rsa-1": issuer.keys["rsa-1"]}
    original = issuer.jwks
    issuer.jwks = lambda: {"keys": [{**original()["keys"][0], "alg": "RS256"}]}  # type: ignore[method-assign]
    pinned = verifier(issuer, oidc_algorithms=["RS256", "PS256"])
    assert pinned.verify(issuer.token(kid="rsa-1"))
    refused(pinned, issuer.token(kid="rsa-1", alg="PS256"), "does not fit")


def test_tampered_and_garbage_tokens(issuer: Issuer) -> None:
    check = verifier(issuer)
    good = issuer.token()
    head, payload, signature = good.split(".")
    forged = issuer.token(scope="imageiq:admin").split(".")[1]
    refused(check, f"{head}.{forged}.{signature}", "Invalid bearer token")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    refused(check, f"{head}.{payload}.{flipped}", "Invalid bearer token")
    other = rsa_key()  # right kid, another key
    refused(check, issuer.token(kid="rsa-1", key=other), "Invalid bearer token")
    for garbage in ("a.b.c", "...", "x" * 20 + "." + "y" * 20 + ".", "e30.e30.", "a" * 20_000):
        refused(check, garbage, "Invalid bearer token|algorithm is not accepted")
    assert check.verify(good).key_id == "oidc:alice"


def test_the_bearer_token_of_a_header() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer  {token} ") == token
    for header in (None, "", f"Basic {token}", "Bearer iiq_" + "0" * 16 + "_" + "0" * 48):
        assert bearer_token(header) is None
    assert bearer_token("Bearer not a token") is None and bearer_token(token) is None


def test_an_unknown_kid_refetches_once_and_picks_up_a_rotated_key(issuer: Issuer) -> None:
    check = verifier(issuer, min_refresh_s=0.5)
    assert check.verify(issuer.token())
    assert issuer.hits[JWKS] == 1
    rotated = rsa_key()
    issuer.keys["rsa-2"] = rotated
    token = issuer.token(kid="rsa-2")
    time.sleep(0.6)
    # Not published yet: fetched again (once), still unknown.
    refused(check, token, "key its issuer does not publish")
    assert issuer.hits[JWKS] == 2
    refused(check, token, "key its issuer does not publish")  # within the interval: no fetch
    assert issuer.hits[JWKS] == 2
    issuer.published["rsa-2"] = rotated  # the issuer rotates
    time.sleep(0.6)
    assert check.keys.due("rsa-2")
    assert check.verify(token).key_id == "oidc:alice"
    assert issuer.hits[JWKS] == 3
    assert check.verify(issuer.token(kid="rsa-1"))  # the old key still in the set
    assert issuer.hits[JWKS] == 3


def test_made_up_kids_cannot_make_it_hammer_the_issuer(issuer: Issuer) -> None:
    check = verifier(issuer, min_refresh_s=30)
    assert check.verify(issuer.token())
    for _ in range(200):
        refused(check, issuer.token(kid=uuid.uuid4().hex), "key its issuer does not publish")
    assert issuer.hits[JWKS] == 1
    # And the service's floor: at least a second between fetches.
    with pytest.raises(ValueError):
        Settings(oidc_issuer=issuer.url, oidc_audience="a", oidc_jwks_min_refresh_s=0.1)


def test_the_issuer_down_is_503_and_the_keys_fetched_last_keep_working(
    issuer: Issuer,
) -> None:
    check = verifier(issuer, min_refresh_s=0.2)
    issuer.down = True
    with pytest.raises(IdentityProviderUnavailable) as caught:
        check.verify(issuer.token())
    assert caught.value.status == 503 and caught.value.code == "identity_provider_unavailable"
    assert caught.value.retry_after
    time.sleep(0.3)
    issuer.down = False
    assert check.verify(issuer.token()).key_id == "oidc:alice"
    # Down again, the set stale: known keys still verify; a token needing a new one: 503.
    check.keys._lifetime = 0.0
    issuer.down = True
    time.sleep(0.3)
    assert check.verify(issuer.token(kid="ec-1")).key_id == "oidc:alice"
    time.sleep(0.3)
    with pytest.raises(IdentityProviderUnavailable):
        check.verify(issuer.token(kid="rotated-meanwhile"))


def test_an_unreachable_issuer_is_503(issuer: Issuer) -> None:
    keys = KeySet(issuer="http://127.0.0.1:9", timeout_s=1.0)
    check = TokenVerifier(keys, audience=AUDIENCE, algorithms=["RS256"], grants={})
    with pytest.raises(IdentityProviderUnavailable):
        check.verify(issuer.token())


def test_a_discovery_document_of_another_issuer_is_not_trusted(issuer: Issuer) -> None:
    # The configured issuer ends in "/", the document's does not: not the same issuer.
    keys = KeySet(issuer=issuer.url + "/", min_refresh_s=0.1)
    check = TokenVerifier(keys, audience=AUDIENCE, algorithms=["RS256"], grants={})
    with pytest.raises(IdentityProviderUnavailable):
        check.verify(issuer.token(issuer=issuer.url + "/"))
    assert issuer.hits[JWKS] == 0


def test_a_configured_jwks_url_skips_discovery_and_encryption_keys_are_ignored(
    issuer: Issuer,
) -> None:
    check = verifier(issuer, oidc_jwks_url=issuer.url + JWKS)
    original = issuer.jwks
    issuer.jwks = lambda: {  # type: ignore[method-assign]
        "keys": [{**k, "use": "enc"} if k["kid"] == "ec-1" else k for k in original()["keys"]]
        + [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]
    }
    assert check.verify(issuer.token()).key_id == "oidc:alice"
    refused(check, issuer.token(kid="ec-1"), "does not publish")
    assert issuer.hits["/.well-known/openid-configuration"] == 0


def test_answers_from_memory_and_remembered_tokens(issuer: Issuer) -> None:
    check = verifier(issuer, min_refresh_s=30, auth_cache_ttl_s=5)
    token = issuer.token()
    assert not check.answers_from_memory(token)  # nothing fetched yet: needs the network
    assert check.answers_from_memory("garbage")
    assert check.answers_from_memory(issuer.unsigned_token())
    assert not check.knows(token)
    assert check.verify(token)
    assert check.knows(token) and check.answers_from_memory(token)
    assert check.answers_from_memory(issuer.token(kid="ec-1"))  # known key: a signature check
    assert check.answers_from_memory(issuer.token(kid="nope"))  # fetched a moment ago
    # From memory, a kid that would need a fetch is answered without one.
    assert check.verify(issuer.token(kid="ec-1"), fetch=False)
    assert issuer.hits[JWKS] == 1


def test_presented_subject_is_the_claimed_one_never_the_token(issuer: Issuer) -> None:
    check = verifier(issuer)
    expired = issuer.token(subject="mallory", exp=int(time.time()) - 3600)
    assert check.presented_subject(expired) == "oidc:mallory"
    assert check.presented_subject(issuer.unsigned_token(subject="x y")) == subject_id("x y")
    assert check.presented_subject("a.b.c") is None
    assert check.presented_subject(issuer.token(subject=None)) is None


def test_a_short_rsa_key_is_refused(issuer: Issuer) -> None:
    import warnings

    from cryptography.hazmat.primitives.asymmetric import rsa

    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    issuer.keys["short"] = issuer.published["short"] = short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns when it signs with it
        token = issuer.token(kid="short")
    refused(verifier(issuer), token, "Invalid bearer token")
