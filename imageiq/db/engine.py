"""Connecting to the metadata database, and its migrations (Alembic, shipped in the package).

PostgreSQL URLs may be written ``postgresql://`` or ``postgres://``: they are driven by
psycopg 3. SQLite (the embedded default) gets foreign keys, WAL and a busy timeout, so the
service's writer thread and the CLI can use the same file at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from imageiq import errors

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise errors.ConfigurationError(f"database_url is not a SQLAlchemy URL: {e}") from e
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise errors.ConfigurationError(
            f"database_url {parsed.render_as_string()}: only PostgreSQL and SQLite are supported"
        )
    return parsed


def describe(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str, *, timeout_s: float = 3.0) -> Engine:
    parsed = parse_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": max(timeout_s, 5.0)}
        engine = create_engine(parsed, connect_args=connect_args)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {
        "connect_timeout": max(1, math.ceil(timeout_s)),
        # A statement stuck behind a lock must not hold a request or the writer forever.
        "options": "-c statement_timeout=30000 -c lock_timeout=10000 -c timezone=UTC",
    }
    return create_engine(
        parsed,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=timeout_s,
        pool_recycle=1800,
    )


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as e:
        raise errors.DatabaseUnavailable(
            f"cannot reach the database at {describe(engine.url)}: {_reason(e)}"
        ) from e


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate to ``revision``; returns (before, after)."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    after = current_revision(engine)
    assert after is not None
    return before, after


def check_migrated(engine: Engine) -> None:
    """Refuse a database that is not at this release's migration head."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    where = describe(engine.url)
    if current is None:
        state = "has no ImageIQ schema"
    elif current in {s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}:
        state = f"is at migration {current}, this release needs {head}"
    else:
        state = f"is at migration {current}, which this release does not know (a newer one?)"
    raise errors.DatabaseNotMigrated(
        f"the database at {where} {state}: run `imageiq db upgrade` first"
    )


# SQLSTATE classes and codes that mean "the database is away for now, try again": connection
# exceptions, operator intervention (a shutdown), insufficient resources, a rolled-back
# transaction (serialization, deadlock), and a read-only transaction (during a failover).
_AWAY_CLASSES = ("08", "57", "53", "40")
_AWAY_CODES = frozenset({"25006"})


def is_transient(error: BaseException) -> bool:
    """Whether a database error means "down or failing over": keep the work and retry, as
    opposed to a statement the database refuses for good."""
    if isinstance(error, (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        state = str(getattr(error.orig, "sqlstate", None) or "")
        return state[:2] in _AWAY_CLASSES or state in _AWAY_CODES
    return False


def _reason(error: SQLAlchemyError) -> str:
    original = getattr(error, "orig", None) or error
    return str(original).strip().splitlines()[0][:300] if str(original).strip() else repr(error)
