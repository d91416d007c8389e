"""The metadata schema's migrations, on an empty SQLite file and on a private PostgreSQL
cluster: they reach head, are idempotent, go down and up again, and leave exactly the schema
the models declare; and the database URL handling around them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from imageiq import errors
from imageiq.db.engine import (
    alembic_config,
    check_migrated,
    current_revision,
    describe,
    head_revision,
    make_engine,
    parse_url,
    upgrade,
)
from imageiq.db.schema import Base
from tests.backends import PostgresServer, free_port

TABLES = {
    "api_keys",
    "audit_log",
    "evaluations",
    "golden_images",
    "images",
    "job_items",
    "job_results",
    "jobs",
    "labels",
    "models",
    "predictions",
    "rollouts",
    "tombstones",
    "webhook_deliveries",
}
_names = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def _fresh_postgres_url(server: PostgresServer) -> str:
    """A new, empty database in the shared cluster: each test starts from nothing."""
    name = f"migrations_{next(_names)}"
    admin = make_engine(server.url)
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'imageiq.db'}"
    else:
        url = _fresh_postgres_url(request.getfixturevalue("postgres"))
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


# --- upgrade -----------------------------------------------------------------------------------
def test_upgrade_of_an_empty_database_reaches_head(empty: Engine) -> None:
    assert current_revision(empty) is None
    assert _tables(empty) == set()
    before, after = upgrade(empty)
    assert (before, after) == (None, head_revision())
    assert current_revision(empty) == head_revision()
    assert _tables(empty) == TABLES


def test_upgrade_twice_is_a_no_op(empty: Engine) -> None:
    upgrade(empty)
    with empty.begin() as connection:
        connection.execute(text("INSERT INTO audit_log (action, detail) VALUES ('marker', '{}')"))
    assert upgrade(empty) == (head_revision(), head_revision())
    with empty.connect() as connection:
        assert connection.execute(text("SELECT action FROM audit_log")).scalars().all() == [
            "marker"
        ]


def test_migrated_schema_matches_the_models(empty: Engine) -> None:
    upgrade(empty)
    assert _differences(empty) == []


def test_an_empty_database_is_refused_until_upgraded(empty: Engine) -> None:
    with pytest.raises(errors.DatabaseNotMigrated, match="imageiq db upgrade") as refused:
        check_migrated(empty)
    assert "has no ImageIQ schema" in refused.value.message
    assert refused.value.code == "database_not_migrated"
    upgrade(empty)
    check_migrated(empty)


def test_an_unknown_revision_is_refused_as_such(empty: Engine) -> None:
    upgrade(empty)
    with empty.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(errors.DatabaseNotMigrated, match="does not know") as refused:
        check_migrated(empty)
    assert "imageiq db upgrade" in refused.value.message


def test_downgrade_to_base_and_upgrade_again(empty: Engine) -> None:
    upgrade(empty)
    command.downgrade(alembic_config(empty), "base")
    assert current_revision(empty) is None
    assert _tables(empty) == set()
    with pytest.raises(errors.DatabaseNotMigrated):
        check_migrated(empty)
    assert upgrade(empty) == (None, head_revision())
    assert _tables(empty) == TABLES
    assert _differences(empty) == []
    check_migrated(empty)


def test_an_unreachable_database_is_unavailable_not_unmigrated() -> None:
    engine = make_engine(f"postgresql://nobody:hunter2@127.0.0.1:{free_port()}/x", timeout_s=1)
    try:
        with pytest.raises(errors.DatabaseUnavailable) as down:
            check_migrated(engine)
    finally:
        engine.dispose()
    assert down.value.status == 503
    assert "hunter2" not in down.value.message


# --- URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgres://u:p@db.example:5432/imageiq", "postgresql+psycopg"),
        ("postgresql://u:p@db.example/imageiq", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db.example/imageiq", "postgresql+psycopg"),
        ("sqlite:////var/lib/imageiq/imageiq.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_parse_url_accepts_postgres_and_sqlite(url: str, driver: str) -> None:
    parsed = parse_url(url)
    assert parsed.drivername == driver


def test_parse_url_keeps_the_rest_of_a_postgres_url() -> None:
    parsed = parse_url("postgres://alice:s3cret@db.example:6543/meta?sslmode=require")
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "alice",
        "s3cret",
        "db.example",
        6543,
        "meta",
    )
    assert parsed.query == {"sslmode": "require"}


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@db/imageiq", "mysql+pymysql://u@db/x", "oracle://u@db/x"]
)
def test_parse_url_refuses_other_databases(url: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="only PostgreSQL and SQLite") as refused:
        parse_url(url)
    assert "hunter2" not in refused.value.message


@pytest.mark.parametrize("url", ["", "not a url", "://nothing"])
def test_parse_url_refuses_garbage(url: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        parse_url(url)


def test_describe_hides_the_password() -> None:
    described = describe("postgres://alice:s3cret@db.example:5432/imageiq")
    assert "s3cret" not in described
    assert described == "postgresql+psycopg://alice:***@db.example:5432/imageiq"
    engine = make_engine("postgresql://alice:s3cret@db.example/imageiq")
    try:
        assert "s3cret" not in describe(engine.url)
    finally:
        engine.dispose()
    assert describe("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_0002_adds_the_client_request_ids_and_keeps_the_rows(empty: Engine) -> None:
    upgrade(empty, "0001")
    with empty.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO audit_log (action, detail, request_id) "
                "VALUES ('key.create', '{}', 'r-1')"
            )
        )
    assert upgrade(empty) == ("0001", head_revision())
    columns = {
        table: {c["name"] for c in inspect(empty).get_columns(table)}
        for table in ("predictions", "audit_log", "labels")
    }
    assert {"request_id", "client_request_id"} <= columns["predictions"]
    assert {"request_id", "client_request_id"} <= columns["audit_log"]
    assert {"request_id", "client_request_id"} <= columns["labels"]
    with empty.connect() as connection:
        row = connection.execute(text("SELECT request_id, client_request_id FROM audit_log")).one()
    assert tuple(row) == ("r-1", None)
    command.downgrade(alembic_config(empty), "0001")
    assert "client_request_id" not in {c["name"] for c in inspect(empty).get_columns("audit_log")}
    assert upgrade(empty) == ("0001", head_revision())
    assert _differences(empty) == []


def test_0003_adds_the_tombstones_and_keeps_the_rows(empty: Engine) -> None:
    upgrade(empty, "0002")
    with empty.begin() as connection:
        connection.execute(text("INSERT INTO audit_log (action, detail) VALUES ('marker', '{}')"))
    assert "tombstones" not in _tables(empty)
    assert upgrade(empty) == ("0002", head_revision())
    assert {c["name"] for c in inspect(empty).get_columns("tombstones")} == {
        "sha256",
        "deleted_at",
        "deleted_by",
        "request_id",
        "object_deleted_at",
    }
    with empty.begin() as connection:
        connection.execute(
            text("INSERT INTO tombstones (sha256, deleted_at) VALUES (:sha, :at)"),
            {"sha": "a" * 64, "at": "2026-12-20 10:00:00+00:00"},
        )
    command.downgrade(alembic_config(empty), "0002")
    assert _tables(empty) == TABLES - {
        "tombstones",
        "evaluations",
        "golden_images",
        "rollouts",
        *JOB_TABLES,
    }
    with empty.connect() as connection:
        assert connection.execute(text("SELECT action FROM audit_log")).scalars().all() == [
            "marker"
        ]
    assert upgrade(empty) == ("0002", head_revision())
    assert _differences(empty) == []


def test_0004_adds_the_closed_loop_tables_and_goes_back(empty: Engine) -> None:
    upgrade(empty, "0003")
    assert upgrade(empty) == ("0003", head_revision())
    assert {"golden_images", "evaluations", "rollouts"} <= _tables(empty)
    with empty.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO rollouts (model_name, champion_version, challenger_version, share,"
                " state, policy, started_at, last_stats) VALUES ('m', 'a', 'b', 0.1, 'running',"
                " '{}', '2026-12-21 10:00:00+00:00', '{}')"
            )
        )
    command.downgrade(alembic_config(empty), "0003")
    assert _tables(empty) == TABLES - {"evaluations", "golden_images", "rollouts", *JOB_TABLES}
    assert upgrade(empty) == ("0003", head_revision())
    assert _differences(empty) == []


JOB_TABLES = {"jobs", "job_items", "job_results", "webhook_deliveries"}


def test_0005_adds_the_job_tables_and_goes_back(empty: Engine) -> None:
    upgrade(empty, "0004")
    assert _tables(empty) == TABLES - JOB_TABLES
    assert upgrade(empty) == ("0004", head_revision())
    assert _tables(empty) >= JOB_TABLES
    with empty.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, state, model_name, model_version, top_k, min_confidence,"
                " source, total, chunk_size, progress_webhooks, created_at, results) VALUES"
                " ('j1', 'queued', 'm', 'v', 5, 0.0, '{}', 1, 256, false,"
                " '2026-12-21 10:00:00+00:00', '{}')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO job_items (job_id, position, ref, state)"
                " VALUES ('j1', 0, 'r', 'pending')"
            )
        )
    command.downgrade(alembic_config(empty), "0004")
    assert _tables(empty) == TABLES - JOB_TABLES
    assert upgrade(empty) == ("0004", head_revision())
    assert _differences(empty) == []
