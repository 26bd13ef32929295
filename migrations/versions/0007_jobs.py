"""jobs: long jobs in progress (uploads being indexed, summaries being written) and their status messages

A row lives while its job runs and is deleted once the job has told its user how it ended. Rows found at
start-up belong to jobs a crash or restart cut off: the bot edits their status messages to say so.

Revision ID: 0007_jobs
Revises: 0006_message_sources
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_jobs"
down_revision: str | None = "0006_message_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("status_message_id", sa.BigInteger(), nullable=True),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("created_at", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("kind IN ('ingest', 'summary')", name=op.f("ck_jobs_kind")),
        sa.ForeignKeyConstraint(["chat_id"], ["chats.id"], name=op.f("fk_jobs_chat_id_chats"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_chat_id"), "jobs", ["chat_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_chat_id"), table_name="jobs")
    op.drop_table("jobs")
