"""tombstones: forgotten images stay forgotten on every replica

A deletion commits a tombstone with the removal of the image's rows; every writer of rows
or objects checks it, so records of the image still queued or spooled on another replica
are dropped instead of written back. ``object_deleted_at`` stays empty while the object
may still be in the store, for the sweep to finish.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-20 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tombstones",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_by", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("object_deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_tombstones")),
    )
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tombstones_object_deleted_at"), ["object_deleted_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tombstones", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tombstones_object_deleted_at"))
    op.drop_table("tombstones")
