"""Alembic environment: migrations run on the engine :func:`imageiq.db.engine.alembic_config`
hands over (the CLI's ``imageiq db upgrade``), never on an URL read from a file."""

from __future__ import annotations

from alembic import context

from imageiq.db.schema import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
