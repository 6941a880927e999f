"""Review: tasks' normality rank and review state, the reviews table, projects' ranking
settings, and output versions (a correction is a new row of the same name).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_NEW_UNIQUE = "uq_outputs_task_name_version"
# SQLite keeps 0001's unique (task_id, name) unnamed: batch mode names it by this convention
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique_name() -> str | None:
    """The name of 0001's unique (task_id, name) on outputs (None where unnamed)."""
    for found in sa.inspect(op.get_bind()).get_unique_constraints("outputs"):
        if list(found["column_names"]) == ["task_id", "name"]:
            return found["name"]
    raise RuntimeError("outputs has no unique (task_id, name): the database is not at 0001")


def upgrade() -> None:
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ranking", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank_score", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("colour", sa.String(length=8), nullable=True))
        batch_op.add_column(
            sa.Column("rank_reasons", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("uncertain", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("review_state", sa.String(length=16), nullable=False, server_default="none")
        )
        batch_op.create_index(batch_op.f("ix_tasks_review_state"), ["review_state"], unique=False)
    old = _old_unique_name()
    if old is None:
        with op.batch_alter_table("outputs", naming_convention=_SQLITE_NAMES) as batch_op:
            batch_op.drop_constraint("uq_outputs_task_id", type_="unique")
            batch_op.create_unique_constraint(_NEW_UNIQUE, ["task_id", "name", "version"])
    else:
        with op.batch_alter_table("outputs", schema=None) as batch_op:
            batch_op.drop_constraint(old, type_="unique")
            batch_op.create_unique_constraint(_NEW_UNIQUE, ["task_id", "name", "version"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("output_version", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_task_id"), ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviews_task_id"))
    op.drop_table("reviews")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_constraint(_NEW_UNIQUE, type_="unique")
        batch_op.create_unique_constraint("outputs_task_id_name_key", ["task_id", "name"])
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_review_state"))
        for column in ("review_state", "uncertain", "rank_reasons", "colour", "rank_score"):
            batch_op.drop_column(column)
    with op.batch_alter_table("projects", schema=None) as batch_op:
        batch_op.drop_column("ranking")
