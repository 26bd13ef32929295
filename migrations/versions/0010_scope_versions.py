"""scope versions: a counter per retrieval scope, bumped when its ready documents change

Each replica keeps the scope's FAISS and BM25 index as a cache of SQL; reading this one row before every search
tells it whether another replica finished an upload or forgot a document since the index was built.

Revision ID: 0010_scope_versions
Revises: 0009_leases
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_scope_versions"
down_revision: str | None = "0009_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scope_versions",
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_scope_versions")),
    )


def downgrade() -> None:
    op.drop_table("scope_versions")
