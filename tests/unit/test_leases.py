"""Leases on work in progress (bot.services.work_leases, bot.db.lease_queries), on real SQLite and PostgreSQL: a replica's
start-up recovery leaves another live replica's job, half-indexed document and streaming reply alone; the owner's
heartbeat keeps them; once its lease has expired (the replica died) another replica takes each over exactly once,
also when two sweep at the same moment. With one process (SQLite, the default) a start settles everything it
finds, as before leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import chat_queries, document_queries, message_queries
from bot.db.session import create_engine, session_factory, upgrade
from bot.services.long_jobs import Jobs
from bot.services.work_leases import Leases

CHAT, ANN = -100700, 701
T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    made = session_factory(engine)
    async with made() as s:
        await chat_queries.ensure_user_and_chat(s, CHAT, "private", ANN, "ann", "Ann")
    yield made
    await engine.dispose()


def replica(sessions, name: str, clock: Clock, shared: bool = True) -> Leases:
    return Leases(sessions, 30.0, shared=shared, owner=name, clock=clock)


async def _work_of(a: Leases) -> None:
    """A's work in progress: a streaming reply and a document being indexed (its job is held open by the caller)."""
    async with a.sessions() as s:
        await message_queries.record_update_and_turn(s, "message:1:1", CHAT, ANN, "hello", 1, lease=a.lease())
        await document_queries.begin_document(s, scope="chat:1", name="big.pdf", mime="application/pdf", sha256="ab" * 32,
                                              size_bytes=10, chat_id=CHAT, lease=a.lease())


async def _sweep(b: Leases) -> tuple[list, list, list]:
    """What B's recovery takes: (jobs, documents deleted, replies)."""
    jobs = await Jobs(b.sessions, b).recover()
    async with b.sessions() as s:
        documents = await document_queries.discard_unfinished(s, None, b.lease(), b.expired_before())
        replies = await message_queries.interrupted_messages(s, b.lease(), b.expired_before())
    return jobs, documents, replies


async def test_a_live_replicas_work_is_left_alone_until_its_lease_expires(sessions) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0)
    a, b = replica(sessions, "a", clock_a), replica(sessions, "b", clock_b)
    async with Jobs(sessions, a).track("ingest", CHAT, ANN, 55, "big.pdf"):
        await _work_of(a)
        clock_b.advance(10)
        assert await _sweep(b) == ([], [], []), "B started while A works: nothing of A's is touched"
        clock_a.advance(25)
        assert await a.renew() == 3, "A's heartbeat holds its job, document and reply"
        clock_b.advance(30)  # 40 s: past A's first lease, within the renewed one
        assert await _sweep(b) == ([], [], [])
        clock_b.advance(20)  # A died after its last heartbeat: its lease ran out at 55 s
        jobs, documents, replies = await _sweep(b)
        assert [(j.label, j.status_message_id, j.owner) for j in jobs] == [("big.pdf", 55, "b")]
        assert documents == ["big.pdf"]
        assert [(m.role, m.status, m.owner) for m in replies] == [("assistant", "streaming", "b")]
        assert await _sweep(b) == ([], [], []), "taken over once"


async def test_two_replicas_sweeping_at_once_take_each_row_once(sessions) -> None:
    a = replica(sessions, "a", Clock(T0))
    for n in range(6):
        async with sessions() as s:
            await message_queries.record_update_and_turn(s, f"message:1:{n}", CHAT, ANN, f"q{n}", n, lease=a.lease())
    later = Clock(T0 + timedelta(minutes=5))
    b, c = replica(sessions, "b", later), replica(sessions, "c", later)

    async def take(r: Leases) -> list[int]:
        async with sessions() as s:
            return [m.id for m in await message_queries.interrupted_messages(s, r.lease(), r.expired_before())]

    taken_b, taken_c = await asyncio.gather(take(b), take(c))
    assert len(taken_b) + len(taken_c) == 6 and not set(taken_b) & set(taken_c)


async def test_one_process_settles_everything_it_finds_at_start(sessions) -> None:
    a = replica(sessions, "a", Clock(T0), shared=False)
    async with Jobs(sessions, a).track("summary", CHAT, ANN, 9, "notes.txt"):
        await _work_of(a)
        restarted = replica(sessions, "a-after-restart", Clock(T0), shared=False)  # no time has passed
        jobs, documents, replies = await _sweep(restarted)
    assert [j.label for j in jobs] == ["notes.txt"] and documents == ["big.pdf"] and len(replies) == 1
