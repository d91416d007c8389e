"""API keys on a migrated SQLite file (and, for outages, a private PostgreSQL cluster that the
test stops): minting, what is stored, checking, caching, revoking."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from imageiq import errors
from imageiq.db.engine import make_engine, upgrade
from imageiq.db.schema import ApiKey, AuditEntry
from imageiq.keys import (
    SCOPES,
    KeyRing,
    Principal,
    create_key,
    hash_secret,
    list_keys,
    parse_scopes,
    revoke_key,
)
from tests.backends import PostgresServer, migrated

PEPPER = b"pepper-for-the-key-tests-0123456789"
KEY = re.compile(r"^iiq_([0-9a-f]{16})_([0-9a-f]{48})$")
INVALID = "Invalid API key."


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with migrated(f"sqlite:///{tmp_path / 'imageiq.db'}") as engine:
        yield engine


@pytest.fixture
def ring(engine: Engine) -> KeyRing:
    return KeyRing(engine, pepper=PEPPER, ttl_s=0.2)


def _key(engine: Engine, scopes: list[str] | None = None, *, name: str = "tests") -> str:
    key, _ = create_key(engine, name=name, scopes=scopes or ["classify"], pepper=PEPPER)
    return key


def _parts(key: str) -> tuple[str, str]:
    """A key's id and secret."""
    match = KEY.match(key)
    assert match is not None, key
    return match.group(1), match.group(2)


def _unauthorized(ring: KeyRing, authorization: str | None) -> str:
    with pytest.raises(errors.Unauthorized) as refused:
        ring.authenticate(authorization)
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    return refused.value.message


# --- minting -----------------------------------------------------------------------------------
def test_create_key_returns_id_and_secret_and_stores_only_a_hash(engine: Engine) -> None:
    key, row = create_key(
        engine, name="  ci runner ", scopes=["label", "classify"], pepper=PEPPER, actor="cli:x"
    )
    match = KEY.match(key)
    assert match is not None, key
    key_id, secret = match.groups()
    assert row.id == key_id
    assert (row.name, row.scopes) == ("ci runner", ["classify", "label"])
    with engine.connect() as connection:
        stored = connection.execute(select(ApiKey.__table__).where(ApiKey.id == key_id)).one()
    values = [str(v) for v in stored._mapping.values()]
    assert not [v for v in values if secret in v or secret[:16] in v], values
    assert stored.salt and len(stored.salt) == 32
    assert stored.secret_hash == hash_secret(secret, salt=stored.salt, pepper=PEPPER)
    assert stored.revoked_at is None
    with engine.connect() as connection:
        audit = connection.execute(select(AuditEntry.__table__)).one()
    assert (audit.actor, audit.action, audit.target) == ("cli:x", "key.create", key_id)
    assert secret not in str(audit.detail)


def test_every_key_is_new(engine: Engine) -> None:
    keys = [_key(engine) for _ in range(5)]
    assert len(set(keys)) == 5
    ids = {_parts(k)[0] for k in keys}
    assert ids == {row.id for row in list_keys(engine)}
    with engine.connect() as connection:
        salts = connection.execute(select(ApiKey.salt)).scalars().all()
    assert len(set(salts)) == 5


@pytest.mark.parametrize("name", ["", "   ", "x" * 129])
def test_create_key_refuses_a_bad_name(engine: Engine, name: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        create_key(engine, name=name, scopes=["classify"], pepper=PEPPER)
    assert list_keys(engine) == []


# --- scopes ------------------------------------------------------------------------------------
def test_parse_scopes_normalizes() -> None:
    assert parse_scopes(" label , classify,label,") == ["classify", "label"]
    assert parse_scopes(["admin"]) == ["admin"]


@pytest.mark.parametrize("text", ["classify,root", "ADMIN", "read", "", " , ", "classify;label"])
def test_parse_scopes_refuses_unknown_scopes_listing_the_valid_ones(text: str) -> None:
    with pytest.raises(errors.ConfigurationError) as refused:
        parse_scopes(text)
    assert "classify, label, admin" in refused.value.message


def test_create_key_refuses_unknown_scopes(engine: Engine) -> None:
    with pytest.raises(errors.ConfigurationError, match="classify, label, admin"):
        create_key(engine, name="n", scopes=["superuser"], pepper=PEPPER)
    assert list_keys(engine) == []


def test_admin_implies_classify_and_label() -> None:
    admin = Principal("a" * 16, "admin", frozenset({"admin"}))
    assert all(admin.allows(scope) for scope in SCOPES)
    classify = Principal("b" * 16, "classify", frozenset({"classify"}))
    assert classify.allows("classify")
    assert not classify.allows("label") and not classify.allows("admin")
    labeller = Principal("c" * 16, "labeller", frozenset({"label"}))
    assert labeller.allows("label") and not labeller.allows("classify")


# --- authenticate ------------------------------------------------------------------------------
def test_a_good_key_authenticates_with_its_scopes(engine: Engine, ring: KeyRing) -> None:
    key, row = create_key(
        engine, name="svc", scopes=["classify", "label"], pepper=PEPPER, rate_limit_per_minute=7
    )
    who = ring.authenticate(f"Bearer {key}")
    assert who == Principal(row.id, "svc", frozenset({"classify", "label"}), 7)
    assert who.allows("label") and not who.allows("admin")
    # The scheme is case-insensitive, and surrounding blanks do not matter.
    assert ring.authenticate(f"  bearer   {key}  ").key_id == row.id
    admin = ring.authenticate(f"Bearer {_key(engine, ['admin'])}")
    assert admin.scopes == frozenset({"admin"})
    assert admin.allows("classify") and admin.allows("label")


def test_missing_header_is_unauthorized(ring: KeyRing) -> None:
    assert "Authorization: Bearer" in _unauthorized(ring, None)
    assert "Authorization: Bearer" in _unauthorized(ring, "")


def test_other_schemes_and_malformed_tokens_are_unauthorized(engine: Engine, ring: KeyRing) -> None:
    key = _key(engine)
    key_id, secret = _parts(key)
    for authorization in [
        key,  # no scheme
        f"Basic {key}",
        f"Token {key}",
        f"Bearer{key}",
        "Bearer",
        "Bearer ",
        f"Bearer {key.upper()}",
        f"Bearer {key}0",
        f"Bearer {key[:-1]}",
        f"Bearer iiq_{key_id}",
        f"Bearer iiq_{key_id}_",
        f"Bearer {key_id}_{secret}",
        f"Bearer xyz_{key_id}_{secret}",
        f"Bearer iiq-{key_id}-{secret}",
        f"Bearer {key} {key}",
        f"Bearer {key}\x00",
    ]:
        assert _unauthorized(ring, authorization) == INVALID, authorization


def test_unknown_id_wrong_secret_and_revoked_look_the_same(engine: Engine) -> None:
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=0)
    key = _key(engine)
    key_id, secret = _parts(key)
    revoked = _key(engine)
    revoke_key(engine, _parts(revoked)[0])
    messages = {
        "unknown id": _unauthorized(ring, f"Bearer iiq_{'0' * 16}_{secret}"),
        "wrong secret": _unauthorized(ring, f"Bearer iiq_{key_id}_{'0' * 48}"),
        "revoked": _unauthorized(ring, f"Bearer {revoked}"),
    }
    assert set(messages.values()) == {INVALID}, messages
    assert ring.authenticate(f"Bearer {key}").key_id == key_id


def test_the_pepper_matters(engine: Engine) -> None:
    key = _key(engine)
    assert KeyRing(engine, pepper=PEPPER, ttl_s=0).authenticate(f"Bearer {key}")
    assert _unauthorized(
        KeyRing(engine, pepper=b"another-pepper-entirely", ttl_s=0), f"Bearer {key}"
    )
    assert _unauthorized(KeyRing(engine, pepper=b"", ttl_s=0), f"Bearer {key}") == INVALID


def test_sql_ish_ids_are_simply_not_found(engine: Engine, ring: KeyRing) -> None:
    key = _key(engine)
    for hostile in ["' OR 1=1 --", "%", "*", "'; DELETE FROM api_keys; --", "../../etc/passwd"]:
        with pytest.raises(errors.KeyNotFound) as missing:
            revoke_key(engine, hostile)
        assert missing.value.status == 404
        assert _unauthorized(ring, f"Bearer iiq_{hostile}_{'0' * 48}") == INVALID
    assert [row.revoked_at for row in list_keys(engine)] == [None]
    assert ring.authenticate(f"Bearer {key}")


# --- revoking ----------------------------------------------------------------------------------
def test_revoke_key_marks_it_and_audits_once(engine: Engine) -> None:
    key = _key(engine)
    key_id = _parts(key)[0]
    row = revoke_key(engine, key_id, actor="cli:ops")
    assert row.id == key_id and row.revoked_at is not None
    again = revoke_key(engine, key_id, actor="cli:ops")
    assert again.revoked_at == row.revoked_at
    with engine.connect() as connection:
        actions = connection.execute(
            select(AuditEntry.action, AuditEntry.target, AuditEntry.actor).order_by(AuditEntry.id)
        ).all()
    assert [tuple(a) for a in actions] == [
        ("key.create", key_id, None),
        ("key.revoke", key_id, "cli:ops"),
    ]


@pytest.mark.parametrize("key_id", ["0" * 16, "f" * 16, "ABCDEF0123456789", "", "0" * 17])
def test_revoke_key_of_an_unknown_id(engine: Engine, key_id: str) -> None:
    _key(engine)
    with pytest.raises(errors.KeyNotFound) as missing:
        revoke_key(engine, key_id)
    assert missing.value.code == "key_not_found"


# --- caching -----------------------------------------------------------------------------------
def test_a_key_revoked_elsewhere_works_only_until_the_ttl(engine: Engine) -> None:
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=0.2)
    key = _key(engine)
    key_id = _parts(key)[0]
    checked = time.monotonic()
    assert ring.authenticate(f"Bearer {key}").key_id == key_id
    revoke_key(engine, key_id)  # by another replica: this ring is not told
    if time.monotonic() - checked < 0.15:  # still well inside the ttl: the cache answers
        assert ring.authenticate(f"Bearer {key}").key_id == key_id
    time.sleep(max(0.0, checked + 0.25 - time.monotonic()))
    assert _unauthorized(ring, f"Bearer {key}") == INVALID


def test_forget_applies_a_revocation_at_once(engine: Engine) -> None:
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=3600)
    key = _key(engine)
    key_id = _parts(key)[0]
    assert ring.authenticate(f"Bearer {key}")
    revoke_key(engine, key_id)
    assert ring.authenticate(f"Bearer {key}").key_id == key_id  # cached for an hour
    ring.forget(key_id)
    assert _unauthorized(ring, f"Bearer {key}") == INVALID


def test_a_key_created_after_a_miss_works_once_the_miss_expires(engine: Engine) -> None:
    """A miss is cached too (random ids must not each cost a query), for ttl_s only."""
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=0.2)
    assert _unauthorized(ring, f"Bearer iiq_{'1' * 16}_{'2' * 48}") == INVALID
    key = _key(engine)
    time.sleep(0.25)
    assert ring.authenticate(f"Bearer {key}")


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_database_down_known_keys_work_stale_for_the_grace_unseen_ones_get_503(
    postgres: PostgresServer,
) -> None:
    engine = make_engine(postgres.url, timeout_s=1)
    try:
        upgrade(engine)
        seen, unseen = _key(engine, ["label"], name="seen"), _key(engine, name="unseen")
        ring = KeyRing(engine, pepper=PEPPER, ttl_s=0.2, stale_grace_s=3.0)
        strict = KeyRing(engine, pepper=PEPPER, ttl_s=0.2)  # no grace: fail closed
        fresh = ring.authenticate(f"Bearer {seen}")
        assert fresh.name == "seen" and not fresh.stale
        strict.authenticate(f"Bearer {seen}")
        postgres.stop()
        time.sleep(0.25)  # past the ttl: the ring asks the database, which is down
        who = ring.authenticate(f"Bearer {seen}")
        assert (who.name, who.scopes, who.stale) == ("seen", frozenset({"label"}), True)
        with pytest.raises(errors.DatabaseUnavailable):
            strict.authenticate(f"Bearer {seen}")
        with pytest.raises(errors.DatabaseUnavailable) as down:
            ring.authenticate(f"Bearer {unseen}")
        assert (down.value.status, down.value.code) == (503, "database_unavailable")
        assert down.value.retry_after is not None
        # A token that cannot be a key needs no database to be refused.
        assert _unauthorized(ring, "Bearer nonsense") == INVALID
        # The cache keeps the right answer for a wrong secret too.
        seen_id = _parts(seen)[0]
        assert _unauthorized(ring, f"Bearer iiq_{seen_id}_{'0' * 48}") == INVALID
        time.sleep(3.0)  # past the grace too: refused like an unseen key
        with pytest.raises(errors.DatabaseUnavailable):
            ring.authenticate(f"Bearer {seen}")
        postgres.start()
        assert ring.authenticate(f"Bearer {unseen}").name == "unseen"
        assert not ring.authenticate(f"Bearer {seen}").stale
    finally:
        engine.dispose()


def test_a_flood_of_unknown_keys_neither_evicts_good_keys_nor_grows_without_bound(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(KeyRing, "UNKNOWN_MAX", 50)
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=3600)
    good = _key(engine)
    ring.authenticate(f"Bearer {good}")
    for _ in range(500):
        made_up = f"Bearer iiq_{secrets.token_hex(8)}_{secrets.token_hex(24)}"
        assert _unauthorized(ring, made_up) == INVALID
    assert len(ring._unknown) == 50  # bounded
    assert ring.answers_from_memory(f"Bearer {good}")  # still cached: no database needed
    engine.dispose()
    Path(str(engine.url.database)).unlink()  # the database is gone; the good key is not
    assert ring.authenticate(f"Bearer {good}").name == "tests"


def test_answers_from_memory_only_for_a_fresh_cached_row_or_a_malformed_key(
    engine: Engine,
) -> None:
    """The service checks on its event loop exactly the keys that need no database."""
    ring = KeyRing(engine, pepper=PEPPER, ttl_s=3600)
    key = _key(engine)
    for header in (None, "", "Basic abc", "Bearer nope", f"Token {key}"):
        assert ring.answers_from_memory(header)  # refused without a lookup
    assert not ring.answers_from_memory(f"Bearer {key}")  # never looked up yet
    ring.authenticate(f"Bearer {key}")
    assert ring.answers_from_memory(f"Bearer {key}")
    ring.forget(_parts(key)[0])
    assert not ring.answers_from_memory(f"Bearer {key}")
    stale = KeyRing(engine, pepper=PEPPER, ttl_s=0)
    stale.authenticate(f"Bearer {key}")
    assert not stale.answers_from_memory(f"Bearer {key}")  # cached but expired
