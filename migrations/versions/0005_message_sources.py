"""message sources: which documents each turn drew on, turns kept out after a /forget, who uploaded a document

Adds messages.forgotten_at (a turn that drew on a forgotten document is never again sent to the model nor
exported for training), the message_sources links that find those turns, and documents.uploaded_by (the
uploader may forget their own document). Turns stored before this revision have no links: forgetting an
older document cannot find the answers it gave.

Revision ID: 0005_message_sources
Revises: 0004_chunk_windows
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_message_sources"
down_revision: str | None = "0004_chunk_windows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("messages", sa.Column("forgotten_at", Timestamp, nullable=True))
    # batch mode: SQLite can only add a foreign key by rebuilding the table
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("uploaded_by", sa.BigInteger(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_documents_uploaded_by_users"), "users", ["uploaded_by"], ["id"], ondelete="SET NULL"
        )
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
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint(op.f("fk_documents_uploaded_by_users"), type_="foreignkey")
        batch.drop_column("uploaded_by")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("forgotten_at")
