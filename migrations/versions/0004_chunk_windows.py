"""chunk windows: each chunk's sentence-window embeddings (float16, windows x dim) for sentence-level dense scores

Revision ID: 0004_chunk_windows
Revises: 0003_training
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_chunk_windows"
down_revision: str | None = "0003_training"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: chunks stored before this revision have none until KnowledgeBase fills them in (_fill_windows).
    op.add_column("chunks", sa.Column("window_embeddings", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("window_embeddings")
