"""stats: who uploaded each document, and an index over a chat's messages by Telegram message id

/stats counts a user's documents (documents.user_id; NULL for documents uploaded before this revision, whose
uploader is unknown) and the tokens of the bot's replies to a user's messages (a reply's
reply_to_telegram_message_id joined to its question in the same chat, which the new index serves).

Revision ID: 0005_stats
Revises: 0004_chunk_windows
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_stats"
down_revision: str | None = "0004_chunk_windows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:  # SQLite adds the foreign key by rebuilding the table
        batch.add_column(sa.Column("user_id", sa.BigInteger(), nullable=True))
        batch.create_foreign_key(op.f("fk_documents_user_id_users"), "users", ["user_id"], ["id"],
                                 ondelete="SET NULL")
    op.create_index("ix_messages_chat_id_telegram_message_id", "messages", ["chat_id", "telegram_message_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_chat_id_telegram_message_id", table_name="messages")
    with op.batch_alter_table("documents") as batch:
        batch.drop_constraint(op.f("fk_documents_user_id_users"), type_="foreignkey")
        batch.drop_column("user_id")
