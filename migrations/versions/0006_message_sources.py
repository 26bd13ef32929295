"""message sources: which documents each turn drew on, and turns kept out after a /forget

Adds messages.forgotten_at (a turn that drew on a forgotten document is never again sent to the model nor
exported for training) and the message_sources links that find those turns. Who may forget a document is
decided by its uploader, documents.user_id, which 0005_stats added. Turns stored before this revision have
no links: forgetting an older document cannot find the answers it gave.

Revision ID: 0006_message_sources
Revises: 0005_stats
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_message_sources"
down_revision: str | None = "0005_stats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("messages", sa.Column("forgotten_at", Timestamp, nullable=True))
    op.create_table(
        "message_sources",
        sa.Column("message_id", BigID, nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_message_sources_message_id_messages"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["document_id"], ["documents.id"], name=op.f("fk_message_sources_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", "document_id", name=op.f("pk_message_sources")),
    )
    op.create_index(op.f("ix_message_sources_document_id"), "message_sources", ["document_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_message_sources_document_id"), table_name="message_sources")
    op.drop_table("message_sources")
    with op.batch_alter_table("messages") as batch:  # SQLite drops a column by rebuilding the table
        batch.drop_column("forgotten_at")
