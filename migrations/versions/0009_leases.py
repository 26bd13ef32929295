"""leases: jobs, documents being indexed and replies being written name their replica and its lease

With several replicas on one database, start-up recovery may only settle work whose replica died: a row's lease
is renewed by its replica's heartbeat, and another replica takes the row over once the lease has expired
(bot.db.lease_queries). Rows written before carry no lease, which counts as expired.

Revision ID: 0009_leases
Revises: 0008_update_keys
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_leases"
down_revision: str | None = "0008_update_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("jobs", "documents", "messages")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("owner", sa.String(length=64), nullable=True))
        op.add_column(table, sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_until")
            batch.drop_column("owner")
