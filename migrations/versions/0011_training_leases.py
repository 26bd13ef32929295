"""training leases: a training run names the replica that runs it and its lease

A retraining run is work in progress like an upload: its replica's heartbeat renews the lease, and once that
replica has died another one marks the run resumable (its checkpoint is here) or failed, and tells the admin
(bot.services.training.service). Rows written before carry no lease, which counts as expired.

Revision ID: 0011_training_leases
Revises: 0010_scope_versions
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_training_leases"
down_revision: str | None = "0010_scope_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("owner", sa.String(length=64), nullable=True))
    op.add_column("training_runs", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")
