"""The operator commands (``imageiq db``, ``imageiq keys``, ``imageiq purge``) run through
:func:`imageiq_cli.main.main` with their settings from the environment, as an operator runs them:
on the embedded SQLite under a temporary data directory, and once on PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from imageiq import catalog
from imageiq.db.engine import head_revision, make_engine
from imageiq.db.schema import AuditEntry, Image, Label, Prediction
from imageiq.keys import KeyRing, Principal
from imageiq.settings import Settings
from imageiq.storage import LocalStore
from imageiq_cli.main import main
from tests.backends import PostgresServer, free_port

PEPPER = "a-pepper-only-these-tests-know-42"
KEY_LINE = r"^iiq_[0-9a-f]{16}_[0-9a-f]{48}$"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from the environment, as the CLI reads them: a data directory of its own."""
    for name in ("IMAGEIQ_DATABASE_URL", "IMAGEIQ_REDIS_URL", "IMAGEIQ_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("IMAGEIQ_DATA_DIR", str(data))
    monkeypatch.setenv("IMAGEIQ_API_KEY_PEPPER", PEPPER)
    return data


@pytest.fixture
def engine(data_dir: Path) -> Iterator[Engine]:
    """The same database the commands use, for the tests' own checks."""
    engine = make_engine(Settings(data_dir=data_dir).database)
    yield engine
    engine.dispose()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flat(text: str) -> str:
    """Rich wraps at the console width: compare words, not line breaks."""
    return " ".join(text.split())


def authenticate(engine: Engine, key: str) -> Principal:
    return KeyRing(engine, pepper=PEPPER.encode(), ttl_s=0).authenticate(f"Bearer {key}")


def create(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, "keys", "create", *argv)
    assert code == 0, err
    key = out.strip()
    assert re.match(KEY_LINE, key), out
    return key


HEAD = head_revision()


def audit_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.target).order_by(AuditEntry.id)
        ).all()
    return [tuple(r) for r in rows]


@pytest.fixture
def migrated(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    return data_dir


# --- db ----------------------------------------------------------------------------------------
def test_db_current_fails_until_upgraded(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "db", "current")
    assert code == 1
    assert "migration (none)" in flat(out) and "imageiq db upgrade" in flat(out)
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0
    assert f"migrated (empty) -> {HEAD}" in flat(out)
    assert (data_dir / "imageiq.db").is_file()
    code, out, _ = run(capsys, "db", "current")
    assert code == 0
    assert f"migration {HEAD}, current" in flat(out)
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0
    assert f"already at migration {HEAD}" in flat(out)


def test_commands_refuse_an_unmigrated_database(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["keys", "create", "--name", "n"],
        ["keys", "list"],
        ["keys", "revoke", "0" * 16],
        ["purge", "--older-than", "90d"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert "database_not_migrated" in flat(err) and "imageiq db upgrade" in flat(err)
        assert out == ""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_db_and_keys_on_postgres(
    data_dir: Path,
    postgres: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The cluster trusts local connections: the password is only there to be hidden.
    url = postgres.url.replace("postgres@", "postgres:pg-s3cret@")
    monkeypatch.setenv("IMAGEIQ_DATABASE_URL", url)
    code, before, _ = run(capsys, "db", "current")
    assert code == 1 and "migration (none)" in flat(before)
    code, upgraded, _ = run(capsys, "db", "upgrade")
    assert code == 0 and f"migrated (empty) -> {HEAD}" in flat(upgraded)
    assert "postgresql+psycopg://postgres:***@127.0.0.1" in upgraded
    code, after, _ = run(capsys, "db", "current")
    assert code == 0 and f"migration {HEAD}, current" in flat(after)
    assert "pg-s3cret" not in before + upgraded + after
    key = create(capsys, "--name", "pg", "--scopes", "admin")
    engine = make_engine(url)
    try:
        assert authenticate(engine, key).scopes == frozenset({"admin"})
    finally:
        engine.dispose()
    assert not (data_dir / "imageiq.db").exists()  # nothing went to the embedded SQLite


def test_db_current_of_an_unreachable_database_exits_2(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEIQ_DATABASE_URL", f"postgres://u:pw-hidden@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("IMAGEIQ_DATABASE_TIMEOUT_S", "1")
    code, out, err = run(capsys, "db", "current")
    assert code == 2
    assert "database_unavailable" in err and "pw-hidden" not in out + err


def test_a_bad_database_url_exits_2(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEIQ_DATABASE_URL", "mysql://root:pw-hidden@db/imageiq")
    code, _, err = run(capsys, "db", "upgrade")
    assert code == 2
    assert "only PostgreSQL and SQLite" in flat(err) and "pw-hidden" not in err


# --- keys --------------------------------------------------------------------------------------
def test_keys_create_prints_a_key_that_authenticates(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keys", "create", "--name", "n", "--scopes", "classify,label")
    assert code == 0
    key = out.strip()
    assert len(out.strip().splitlines()) == 1  # only the key on stdout, for scripts
    who = authenticate(engine, key)
    assert (who.name, who.scopes) == ("n", frozenset({"classify", "label"}))
    assert who.key_id in err and "shown once" in flat(err)
    assert key not in err


def test_keys_create_with_a_rate_limit(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create(capsys, "--name", "slow", "--rate-limit", "12")
    who = authenticate(engine, key)
    assert (who.scopes, who.rate_limit_per_minute) == (frozenset({"classify"}), 12)


@pytest.mark.parametrize("scopes", ["classify,root", "everything", "", "ADMIN"])
def test_keys_create_refuses_bad_scopes(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str], scopes: str
) -> None:
    code, out, err = run(capsys, "keys", "create", "--name", "n", "--scopes", scopes)
    assert code == 2
    assert out == ""
    assert "configuration_error" in err and "classify, label, admin" in flat(err)
    assert audit_rows(engine) == []


def test_keys_create_save_if_missing(
    migrated: Path, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "secrets" / "admin.key"
    save = ("--name", "bootstrap", "--scopes", "admin", "--save", str(saved), "--if-missing")
    first = create(capsys, *save)
    assert saved.read_text() == first + "\n"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    # A working key is kept: nothing printed on stdout, no new key.
    code, out, err = run(capsys, "keys", "create", *save)
    assert code == 0 and out == ""
    assert "holds a working key" in flat(err)
    assert saved.read_text() == first + "\n"
    assert [a for _, a, _ in audit_rows(engine)] == ["key.create"]

    # Revoked: a new key replaces it.
    assert run(capsys, "keys", "revoke", authenticate(engine, first).key_id)[0] == 0
    second = create(capsys, *save)
    assert second != first
    assert saved.read_text() == second + "\n"
    assert authenticate(engine, second).name == "bootstrap"

    # Something that is not a key at all: replaced too.
    saved.write_text("not a key\n")
    third = create(capsys, *save)
    assert saved.read_text() == third + "\n"
    assert [a for _, a, _ in audit_rows(engine)] == [
        "key.create",
        "key.revoke",
        "key.create",
        "key.create",
    ]


def test_keys_create_save_without_if_missing_always_creates(
    migrated: Path, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "k"
    first = create(capsys, "--name", "a", "--save", str(saved))
    second = create(capsys, "--name", "a", "--save", str(saved))
    assert first != second and saved.read_text() == second + "\n"
    assert authenticate(engine, first) and authenticate(engine, second)


def test_keys_create_save_makes_an_existing_file_private(
    migrated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "admin.key"
    saved.write_text("an old, revoked key\n")
    saved.chmod(0o644)
    create(capsys, "--name", "a", "--save", str(saved), "--if-missing")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_keys_list_and_revoke(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create(capsys, "--name", "ops", "--scopes", "label")
    other = create(capsys, "--name", "keeper")
    key_id, other_id = authenticate(engine, key).key_id, authenticate(engine, other).key_id

    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert key_id in out and other_id in out
    assert "ops" in out and "keeper" in out and "label" in out
    assert key not in out and key[21:] not in out  # the secret is never shown again

    code, out, _ = run(capsys, "keys", "revoke", key_id)
    assert code == 0
    assert f"revoked key {key_id} (ops)" in flat(out)
    with pytest.raises(Exception, match="Invalid API key"):
        authenticate(engine, key)
    assert authenticate(engine, other).name == "keeper"

    rows = audit_rows(engine)
    assert [(a, t) for _, a, t in rows] == [
        ("key.create", key_id),
        ("key.create", other_id),
        ("key.revoke", key_id),
    ]
    assert all(actor and actor.startswith("cli") for actor, _, _ in rows)

    # Revoking again is harmless and logs nothing new.
    assert run(capsys, "keys", "revoke", key_id)[0] == 0
    assert len(audit_rows(engine)) == 3

    code, out, _ = run(capsys, "keys", "list")
    revoked_line = next(line for line in out.splitlines() if key_id in line)
    kept_line = next(line for line in out.splitlines() if other_id in line)
    year = f"{datetime.now(timezone.utc):%Y}"
    assert revoked_line.count(year) == 2 and kept_line.count(year) == 1


def test_keys_list_says_which_rate_limit_applies(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {
        name: authenticate(engine, create(capsys, "--name", name, *rate)).key_id
        for name, rate in (
            ("unlimited-key", ["--rate-limit", "0"]),
            ("own-key", ["--rate-limit", "120"]),
            ("default-key", []),
        )
    }
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    line = {name: next(x for x in out.splitlines() if key_id in x) for name, key_id in ids.items()}
    assert "unlimited" in line["unlimited-key"] and "default" not in line["unlimited-key"]
    assert "120/min" in line["own-key"]
    assert "default" in line["default-key"]
    with engine.connect() as connection:
        details = connection.execute(
            select(AuditEntry.detail).where(AuditEntry.action == "key.create")
        ).scalars()
        limits = [d["rate_limit_per_minute"] for d in details]
    assert sorted(map(str, limits)) == ["0", "120", "None"]


def test_keys_list_piped_keeps_whole_cells(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    create(capsys, "--name", "a rather long name for a key", "--scopes", "classify,label,admin")
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert "admin,classify,label" in out
    assert "…" not in out


@pytest.mark.parametrize("key_id", ["0" * 16, "' OR 1=1 --", "../../etc/passwd"])
def test_keys_revoke_of_an_unknown_id_exits_2(
    migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str], key_id: str
) -> None:
    key = create(capsys, "--name", "n")
    code, out, err = run(capsys, "keys", "revoke", key_id)
    assert code == 2 and out == ""
    assert "key_not_found" in err
    assert authenticate(engine, key)
    assert [a for _, a, _ in audit_rows(engine)] == ["key.create"]


# --- purge -------------------------------------------------------------------------------------
def _stored_image(
    engine: Engine, store: LocalStore, n: int, *, at: datetime, labels: int
) -> tuple[str, Path]:
    data = f"image bytes {n}".encode()
    digest = hashlib.sha256(data).hexdigest()
    key = store.put(digest, data, content_type="image/png")
    catalog.insert_ignore(
        engine,
        Image,
        [
            {
                "sha256": digest,
                "storage_key": key,
                "content_type": "image/png",
                "bytes": len(data),
                "width": 1,
                "height": 1,
                "uploaded_by": None,
                "created_at": at,
            }
        ],
    )
    for i in range(labels):
        catalog.insert_ignore(
            engine,
            Label,
            [
                {
                    "image_sha256": digest,
                    "label": f"l{i}",
                    "attributes": {},
                    "source": "user",
                    "created_by": None,
                    "created_at": at,
                }
            ],
        )
    return digest, store.root / key


def _prediction(engine: Engine, image: str, *, at: datetime) -> uuid.UUID:
    pid = uuid.uuid4()
    catalog.insert_ignore(
        engine,
        Prediction,
        [
            {
                "id": pid,
                "image_sha256": image,
                "model_name": "m",
                "model_version": "1",
                "label": "x",
                "score": 0.5,
                "top_k": [],
                "attributes": {},
                "latency_ms": 1.0,
                "cached": False,
                "api_key_id": None,
                "request_id": None,
                "created_at": at,
            }
        ],
    )
    return pid


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return len(connection.execute(select(table)).all())


@pytest.fixture
def aged(migrated: Path, engine: Engine, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """An image stored 100 days ago and one yesterday, with labels and predictions of both
    ages, a 200-day-old prediction of an image never stored, and a key (an audit row)."""
    create(capsys, "--name", "ops")
    now = datetime.now(timezone.utc)
    store = LocalStore(migrated / "images")
    old, old_file = _stored_image(engine, store, 1, at=now - timedelta(days=100), labels=2)
    new, new_file = _stored_image(engine, store, 2, at=now - timedelta(days=1), labels=1)
    return {
        "old": old,
        "old_file": old_file,
        "new": new,
        "new_file": new_file,
        "old_predictions": {
            _prediction(engine, old, at=now - timedelta(days=100)),
            _prediction(engine, "f" * 64, at=now - timedelta(days=200)),
        },
        "kept_predictions": {
            _prediction(engine, old, at=now - timedelta(days=2)),  # a recent one of an old image
            _prediction(engine, new, at=now - timedelta(days=1)),
        },
    }


def test_purge_is_a_dry_run_by_default(
    aged: dict[str, Any], engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "purge", "--older-than", "90d")
    assert code == 0
    text = flat(out)
    assert "would delete (dry run; --apply to delete) 1 stored images" in text
    assert "(with 2 labels) and 2 predictions" in text
    assert aged["old_file"].is_file() and aged["new_file"].is_file()
    assert (_count(engine, Image), _count(engine, Label), _count(engine, Prediction)) == (2, 3, 4)
    assert [a for _, a, _ in audit_rows(engine)] == ["key.create"]


def test_purge_apply_deletes_old_images_and_predictions_only(
    aged: dict[str, Any], engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "purge", "--older-than", "90d", "--apply")
    assert code == 0, err
    assert "deleted 1 stored images (with 2 labels) and 2 predictions" in flat(out)
    assert not aged["old_file"].exists()
    assert aged["new_file"].read_bytes() == b"image bytes 2"
    with engine.connect() as connection:
        images = connection.execute(select(Image.sha256)).scalars().all()
        labels = connection.execute(select(Label.image_sha256)).scalars().all()
        predictions = set(connection.execute(select(Prediction.id)).scalars().all())
    assert images == [aged["new"]]
    assert labels == [aged["new"]]  # the old image's labels went with it
    assert predictions == aged["kept_predictions"]
    # The audit log is kept, and records the purge.
    assert [a for _, a, _ in audit_rows(engine)] == ["key.create", "purge"]
    with engine.connect() as connection:
        detail = connection.scalar(select(AuditEntry.detail).where(AuditEntry.action == "purge"))
    assert (detail["images"], detail["predictions"], detail["failures"]) == (1, 2, 0)

    # Nothing left to do the second time.
    code, out, _ = run(capsys, "purge", "--older-than", "90d", "--apply")
    assert code == 0
    assert "deleted 0 stored images (with 0 labels) and 0 predictions" in flat(out)
    assert aged["new_file"].is_file() and _count(engine, Prediction) == 2


def test_purge_apply_with_a_short_age_keeps_nothing_older(
    aged: dict[str, Any], engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "purge", "--older-than", "12h", "--apply")
    assert code == 0
    assert "deleted 2 stored images (with 3 labels) and 4 predictions" in flat(out)
    assert not aged["old_file"].exists() and not aged["new_file"].exists()
    assert (_count(engine, Image), _count(engine, Label), _count(engine, Prediction)) == (0, 0, 0)
    assert _count(engine, AuditEntry) == 2


@pytest.mark.parametrize("age", ["9x", "0d", "90", "d", "1.5d", "90 days", "1000000d", "2y"])
def test_purge_refuses_a_bad_age(
    aged: dict[str, Any], engine: Engine, capsys: pytest.CaptureFixture[str], age: str
) -> None:
    code, out, err = run(capsys, "purge", "--older-than", age, "--apply")
    assert code == 2
    assert out == ""
    assert "Invalid age" in flat(err) and "h (hours), d (days), w (weeks)" in flat(err)
    assert (_count(engine, Image), _count(engine, Prediction)) == (2, 4)
    assert aged["old_file"].is_file()


def test_purge_with_an_age_beyond_the_calendar_does_not_crash(
    aged: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "purge", "--older-than", "999999w")
    assert code in (0, 2), err
    assert aged["old_file"].is_file()
