"""Long jobs (indexing an upload, writing a summary): what runs now, how to stop it, and what a restart cut off.

A reply being written is stoppable in the same way (`replying`), but held in memory only: its message row in SQL
and that row's recovery are the assistant's (bot.services.assistant), and shutdown leaves it to that recovery.

A job is tracked twice. In memory, with a cancel event that `/cancel` and shutdown set; the job's own code
checks it between steps (embedding batches, summary windows) and stops within a step. In SQL, with the
Telegram message that shows its progress, so that after a crash or kill -9 the next start can find the jobs
that never ended and tell their users (`recover`), instead of leaving "embedding 90%" on screen for ever.
The row is deleted only after the job's last status was shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import job_queries as db
from bot.db.lease_queries import take_abandoned
from bot.db.tables import Job
from bot.services.work_leases import Leases

CANCELLED = "cancelled"  # why a job stopped: a user's /cancel ...
SHUTDOWN = "shutdown"    # ... or the bot stopping


@dataclass
class Running:
    """One job in progress: `cancel` is set (and `reason` says why) when it must stop; `ended` is set once it has
    ended and shown how, with `outcome` (what the job's owner left there, e.g. bot.services.uploads.UploadOutcome)."""

    kind: str
    chat_id: int
    user_id: int | None
    label: str
    cancel: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: object = None
    row_id: int | None = None  # its SQL row (bot.db.tables.Job)

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.cancel.set()

    def check(self) -> None:
        """Raise InterruptedError once the job was asked to stop (called from its worker between steps)."""
        if self.cancel.is_set():
            raise InterruptedError(self.reason or CANCELLED)


class Jobs:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], leases: Leases | None = None):
        self.sessions = sessions
        self.leases = leases or Leases(sessions, 30.0, shared=False)
        self._running: dict[int, Running] = {}  # by SQL id
        self._replies: list[Running] = []  # replies being written (`replying`)
        self.stopping = False

    @contextlib.asynccontextmanager
    async def track(self, kind: str, chat_id: int, user_id: int | None, status_message_id: int | None,
                    label: str) -> AsyncIterator[Running]:
        """Run one job: recorded in SQL and in memory until the block ends. The block should show the job's
        final status before it ends; if the process dies first, the row stays for `recover`."""
        job = Running(kind, chat_id, user_id, label)
        if self.stopping:
            job.stop(SHUTDOWN)
        async with self.sessions() as s:
            row = await db.add_job(s, kind, chat_id, user_id, status_message_id, label, self.leases.lease())
        job.row_id = row.id
        self._running[row.id] = job
        try:
            yield job
        finally:
            del self._running[row.id]
            job.ended.set()
        # only a block that ended normally showed how the job ended; after an error the row stays, and the
        # next start edits the status line, which would otherwise keep showing progress
        async with self.sessions() as s:
            await db.remove_job(s, row.id)

    async def shown(self, job: Running, status_message_id: int) -> None:
        """Record the message that shows a job's status: sent inside `track`, once the row exists, so that a restart
        finds any status line a job left (or the job without one, to report anew)."""
        async with self.sessions() as s:
            await db.set_status_message(s, job.row_id, status_message_id)

    @contextlib.contextmanager
    def replying(self, chat_id: int, user_id: int | None) -> Iterator[Running]:
        """A reply being written to `user_id` in a chat: `cancel` stops it as it stops a job (the generation
        watches the job's `cancel` event)."""
        reply = Running("reply", chat_id, user_id, "your reply")
        self._replies.append(reply)
        try:
            yield reply
        finally:
            self._replies.remove(reply)
            reply.ended.set()

    def stoppable(self, chat_id: int, user_id: int | None = None) -> list[Running]:
        """The jobs and replies running in a chat (only `user_id`'s, when given) that were not asked to stop."""
        return [j for j in [*self._replies, *self._running.values()]
                if j.chat_id == chat_id and (user_id is None or j.user_id == user_id) and not j.cancel.is_set()]

    def cancel(self, chat_id: int, user_id: int | None = None) -> list[Running]:
        """Stop the jobs and replies running in a chat (only `user_id`'s, when given); the ones asked to stop."""
        found = self.stoppable(chat_id, user_id)
        for job in found:
            job.stop(CANCELLED)
        return found

    @staticmethod
    async def wait_ended(jobs: list[Running], timeout_s: float) -> list[Running]:
        """Wait until `jobs` have ended and shown how (at most `timeout_s`); the ones still running then."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for job in jobs:
                    await job.ended.wait()
        return [j for j in jobs if not j.ended.is_set()]

    def running(self, kind: str, chat_id: int) -> list[Running]:
        """The jobs of `kind` running in a chat that were not asked to stop, oldest first."""
        return [j for j in self._running.values() if j.kind == kind and j.chat_id == chat_id and not j.cancel.is_set()]

    def stop_all(self) -> int:
        """The bot is stopping: every running job stops at its next step (and says so); new ones stop at once."""
        self.stopping = True
        for job in self._running.values():
            job.stop(SHUTDOWN)
        return len(self._running)

    async def recover(self) -> list[Job]:
        """Jobs a dead process left unfinished (it died before it could say how they ended: with one process,
        every row a start finds; with replicas, the rows whose lease expired, bot.services.work_leases), now held by
        this process. Each row stays until `settled`: a restart that dies again before telling the user finds the
        job again, and with replicas another one takes it once this one's lease expires."""
        async with self.sessions() as s:
            return await take_abandoned(s, Job, self.leases.lease(), self.leases.expired_before())

    async def settled(self, job: Job) -> None:
        """A recovered job's user was told how it ended: its row goes, so it is reported once."""
        async with self.sessions() as s:
            await db.remove_job(s, job.id)
