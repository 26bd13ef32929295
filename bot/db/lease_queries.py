"""Leases: which replica's work a row is (a job, a document being indexed, a reply being written, a training run),
and until when.

Every replica writes its rows with its owner name and a lease, renews the leases of its rows on a heartbeat
(`renew`), and takes over rows whose lease expired (`take_abandoned`): their replica died. Taking is
`SELECT ... FOR UPDATE SKIP LOCKED` then a new owner and lease in the same transaction, so two replicas sweeping
at once never take the same row (SQLite has one writer at a time and no row locks; SQLAlchemy leaves the
clause out there). A row without a lease (written before leases, or by the command line) counts as abandoned.
Same conventions as `chat_queries.py`: writers commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.tables import Document, Job, Message, TrainingRun


@dataclass(frozen=True)
class Lease:
    """A row's owner and the end of its lease, as written with it."""

    owner: str
    until: datetime

    def values(self) -> dict[str, Any]:
        return {"owner": self.owner, "lease_until": self.until}


def _held(model: Any) -> ColumnElement[bool]:
    """The rows of `model` that are work in progress (the only ones a lease means anything for)."""
    if model is Document:
        return Document.status == "indexing"
    if model is Message:
        return Message.status == "streaming"
    if model is TrainingRun:  # a resumable run's checkpoint is on its replica's disk: it stays that replica's
        return TrainingRun.status.in_(("pending", "running"))
    return true()


async def renew(session: AsyncSession, lease: Lease) -> int:
    """Extend the lease of every row in progress that `lease.owner` holds to `lease.until` (the heartbeat);
    commits. How many rows it holds."""
    held = 0
    for model in (Job, Document, Message, TrainingRun):
        result = await session.execute(update(model).where(model.owner == lease.owner, _held(model))
                                       .values(lease_until=lease.until))
        held += result.rowcount
    await session.commit()
    return held


async def take_abandoned(session: AsyncSession, model: Any, lease: Lease, now: datetime | None,
                         where: ColumnElement[bool] | None = None) -> list[Any]:
    """The rows of `model` in progress (and matching `where`) whose lease expired before `now` (every one when
    `now` is None: a single process finds only a dead predecessor's rows), now held by `lease`; commits."""
    condition = _held(model) if where is None else _held(model) & where
    if now is not None:
        condition = condition & or_(model.lease_until.is_(None), model.lease_until < now)
    # one UPDATE that re-checks the condition: under PostgreSQL's row locks (SKIP LOCKED: a row another replica
    # is taking is left to it) and under SQLite's single writer alike, a row is taken by one sweep only
    free = select(model.id).where(condition).with_for_update(skip_locked=True).scalar_subquery()
    taken = list(await session.scalars(
        update(model).where(model.id.in_(free), condition).values(**lease.values()).returning(model.id)))
    rows = list(await session.scalars(select(model).where(model.id.in_(taken)).order_by(model.id)
                                      .execution_options(populate_existing=True))) if taken else []
    await session.commit()
    return rows
