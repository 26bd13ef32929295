"""This process's leases on its work in SQL: a job, a document being indexed, a reply being written.

With one process (SQLite, the default), whatever a start finds unfinished was left by a dead predecessor, and
it is settled at once, as it always was. With several replicas on one PostgreSQL database, a start-up must not
touch another live replica's work: each row carries its owner and a lease, every replica renews the leases of
its rows on a heartbeat (`renew`, every `lease_s / 3`), and only rows whose lease expired are taken over and
settled (bot.app's sweep, every `lease_s`): a replica killed with kill -9 loses its work to another within
about `lease_s`.

Why leases on our own rows and not a job library (procrastinate and the like): the work here is not a queue of
independent tasks. An upload, a summary or a reply is run by the replica that received its update, inside the
handler that edits its Telegram message as it goes; what another replica needs is only to know when that
replica died, and to settle what it left (tell the user, delete a half-indexed document). A row lock taken
with SELECT ... FOR UPDATE SKIP LOCKED (bot.db.lease_queries) does that on the tables that already hold the work, on
SQLite as on PostgreSQL, with no second schema, worker process or dependency.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import lease_queries as db
from bot.db.lease_queries import Lease


def replica_name() -> str:
    """A name no other process shares: host, process id and a random tag (a pid is reused after a restart)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def leases_for(settings, sessions: async_sessionmaker[AsyncSession]) -> Leases:
    """This process's leases over settings' database: shared unless it is SQLite (one process)."""
    return Leases(sessions, settings.database.lease_s, shared=not settings.database_url.startswith("sqlite"))


class Leases:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], lease_s: float, shared: bool,
                 owner: str | None = None, clock: Callable[[], datetime] | None = None):
        self.sessions = sessions
        self.lease_s = lease_s
        self.shared = shared  # several processes may use the database (PostgreSQL): leases decide
        self.owner = owner or replica_name()
        self.clock = clock or (lambda: datetime.now(UTC))

    def lease(self) -> Lease:
        """The lease this process writes its rows with, and renews."""
        return Lease(self.owner, self.clock() + timedelta(seconds=self.lease_s))

    def expired_before(self) -> datetime | None:
        """Rows whose lease ended before this are abandoned; None: every unfinished row is (one process)."""
        return self.clock() if self.shared else None

    async def renew(self) -> int:
        """The heartbeat: every row this process holds gets a fresh lease. How many it holds."""
        async with self.sessions() as s:
            return await db.renew(s, self.lease())
