"""client request ids apart from the server's; request ids on labels

The server's request id and the X-Request-ID a client sends are kept in two columns: a
client chooses its id freely (it can reuse or forge one), so only the server's finds the
request for sure. Labels get both, like predictions and audit entries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-14 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_request_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_request_id", sa.String(length=64), nullable=True))
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("client_request_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_column("client_request_id")
        batch_op.drop_column("request_id")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("client_request_id")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("client_request_id")
