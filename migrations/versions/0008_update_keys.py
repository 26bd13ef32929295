"""processed_updates keyed on the update's identity, not the Bot API's update id

The Bot API numbers updates per bot, and the numbering restarts with a new token: keyed on that number alone, a
message whose number had been seen before (in any chat) was dropped without a word. The key is now what the update
is (bot.telegram.incoming.update_key); the number stays as a column for the logs. Rows of the old table are kept
under the key 'update:<id>', which no new key can equal, so nothing handled before is handled again by mistake.

Revision ID: 0008_update_keys
Revises: 0007_jobs
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_update_keys"
down_revision: str | None = "0007_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.rename_table("processed_updates", "processed_updates_old")
    if op.get_bind().dialect.name == "postgresql":  # the old primary key's name would collide with the new one's
        op.execute("ALTER TABLE processed_updates_old RENAME CONSTRAINT pk_processed_updates TO pk_processed_updates_old")
    op.create_table(
        "processed_updates",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=True),
        sa.Column("chat_id", sa.BigInteger(), nullable=True),
        sa.Column("processed_at", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_processed_updates")),
    )
    op.execute("INSERT INTO processed_updates (key, update_id, chat_id, processed_at) "
               "SELECT 'update:' || CAST(update_id AS VARCHAR(32)), update_id, chat_id, processed_at "
               "FROM processed_updates_old")
    op.drop_table("processed_updates_old")


def downgrade() -> None:
    # keys without an update id (claimed by content) have no place in the old table
    op.rename_table("processed_updates", "processed_updates_new")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE processed_updates_new RENAME CONSTRAINT pk_processed_updates TO pk_processed_updates_new")
    op.create_table(
        "processed_updates",
        sa.Column("update_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("processed_at", Timestamp, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_processed_updates")),
    )
    op.execute("INSERT INTO processed_updates (update_id, chat_id, processed_at) "
               "SELECT DISTINCT ON (update_id) update_id, chat_id, processed_at FROM processed_updates_new "
               "WHERE update_id IS NOT NULL AND chat_id IS NOT NULL"
               if op.get_bind().dialect.name == "postgresql" else
               "INSERT OR IGNORE INTO processed_updates (update_id, chat_id, processed_at) "
               "SELECT update_id, chat_id, processed_at FROM processed_updates_new "
               "WHERE update_id IS NOT NULL AND chat_id IS NOT NULL")
    op.drop_table("processed_updates_new")
