"""closed loop: golden sets, retrain evaluations, canary rollouts

``golden_images`` pins the images (and their frozen labels) every retrain is judged on;
``evaluations`` records each ``imageiq retrain`` run and its decision; ``rollouts`` holds
canaries (a share of live requests on a challenger version) and how they ended.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-21 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "golden_images",
        sa.Column("set_name", sa.String(length=64), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column(
            "frozen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column("frozen_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_sha256"],
            ["images.sha256"],
            name=op.f("fk_golden_images_image_sha256_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("set_name", "image_sha256", name=op.f("pk_golden_images")),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("champion_version", sa.String(length=64), nullable=True),
        sa.Column("challenger_version", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("primary_metric", sa.String(length=32), nullable=True),
        sa.Column("champion_score", sa.Float(), nullable=True),
        sa.Column("challenger_score", sa.Float(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("dataset", sa.JSON(), nullable=False),
        sa.Column("golden_set", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('promoted', 'canary', 'rejected', 'failed')",
            name=op.f("ck_evaluations_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_model_name"), ["model_name"])
        batch_op.create_index(batch_op.f("ix_evaluations_finished_at"), ["finished_at"])
    op.create_table(
        "rollouts",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("champion_version", sa.String(length=64), nullable=False),
        sa.Column("challenger_version", sa.String(length=64), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("evaluation_id", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_by", sa.String(length=64), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("last_stats", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "state IN ('running', 'promoted', 'rolled_back')", name=op.f("ck_rollouts_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_model_state", ["model_name", "state"])


def downgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index("ix_rollouts_model_state")
    op.drop_table("rollouts")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_finished_at"))
        batch_op.drop_index(batch_op.f("ix_evaluations_model_name"))
    op.drop_table("evaluations")
    op.drop_table("golden_images")
