"""Long jobs in progress (bot.db.tables.Job): written when one starts, deleted when it has ended. Same
conventions as `chat_queries.py`: writers commit."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.lease_queries import Lease
from bot.db.tables import Job


async def add_job(session: AsyncSession, kind: str, chat_id: int, user_id: int | None,
                  status_message_id: int | None, label: str, lease: Lease | None = None) -> Job:
    job = Job(kind=kind, chat_id=chat_id, user_id=user_id, status_message_id=status_message_id, label=label,
              **(lease.values() if lease else {}))
    session.add(job)
    await session.commit()
    return job


async def set_status_message(session: AsyncSession, job_id: int, status_message_id: int) -> None:
    """Record the Telegram message that shows a job's status (sent once the job's row exists)."""
    await session.execute(update(Job).where(Job.id == job_id).values(status_message_id=status_message_id))
    await session.commit()


async def remove_job(session: AsyncSession, job_id: int) -> None:
    await session.execute(delete(Job).where(Job.id == job_id))
    await session.commit()


async def all_jobs(session: AsyncSession) -> list[Job]:
    """Every job row, oldest first."""
    return list(await session.scalars(select(Job).order_by(Job.id)))
