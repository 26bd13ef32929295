"""Long jobs tracked in memory and in real SQLite and PostgreSQL (bot.services.long_jobs): /cancel stops only the
asker's jobs in that chat, shutdown stops all of them and any that start afterwards, and a job that never
finished (its process died) is found by the next start exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.db import chat_queries
from bot.db.session import create_engine, session_factory, upgrade
from bot.services.long_jobs import CANCELLED, SHUTDOWN, Jobs

CHAT, OTHER_CHAT, ANN, BEN = -100900, -100901, 901, 902


@pytest.fixture
async def jobs(db_url: str) -> AsyncIterator[Jobs]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    async with sessions() as s:
        for chat in (CHAT, OTHER_CHAT):
            await chat_queries.ensure_user_and_chat(s, chat, "group", ANN, "ann", "Ann", title="team")
            await chat_queries.ensure_user_and_chat(s, chat, "group", BEN, None, "Ben", title="team")
    yield Jobs(sessions)
    await engine.dispose()


async def test_cancel_stops_the_askers_reply_but_shutdown_leaves_replies_to_their_recovery(jobs: Jobs) -> None:
    with jobs.replying(CHAT, ANN) as ann, jobs.replying(CHAT, BEN) as ben, jobs.replying(OTHER_CHAT, ANN) as elsewhere:
        async with jobs.track("summary", CHAT, ANN, 11, "a.pdf") as summary:
            assert jobs.cancel(CHAT, ANN) == [ann, summary]
        assert ann.cancel.is_set() and ann.reason == CANCELLED and ann.label == "your reply"
        assert not ben.cancel.is_set() and not elsewhere.cancel.is_set()
        assert jobs.stop_all() == 0  # shutdown stops jobs (none left); replies keep their own recovery
        assert not ben.cancel.is_set()
    assert jobs.cancel(CHAT, BEN) == []  # the reply ended: nothing left to stop

async def test_cancel_stops_only_the_askers_jobs_in_that_chat(jobs: Jobs) -> None:
    async with jobs.track("summary", CHAT, ANN, 11, "a.pdf") as ann, \
            jobs.track("ingest", CHAT, BEN, 12, "b.txt") as ben, \
            jobs.track("ingest", OTHER_CHAT, ANN, 13, "c.txt") as elsewhere:
        assert jobs.cancel(CHAT, ANN) == [ann]
        assert ann.cancel.is_set() and ann.reason == CANCELLED
        assert not ben.cancel.is_set() and not elsewhere.cancel.is_set()
        with pytest.raises(InterruptedError):
            ann.check()
        ben.check()  # still running: no error
        assert jobs.cancel(CHAT, ANN) == [], "asked to stop once"
    assert jobs.cancel(CHAT) == [], "finished jobs are no longer tracked"
    assert await jobs.recover() == [], "jobs that ended normally leave no row"


async def test_shutdown_stops_running_jobs_and_new_ones(jobs: Jobs) -> None:
    async with jobs.track("summary", CHAT, ANN, 11, "a.pdf") as running:
        assert jobs.stop_all() == 1
        assert running.reason == SHUTDOWN
        jobs.cancel(CHAT, ANN)
        assert running.reason == SHUTDOWN, "the first reason stays"
    async with jobs.track("ingest", CHAT, BEN, 12, "late.txt") as late:
        assert late.cancel.is_set() and late.reason == SHUTDOWN


async def test_a_job_whose_block_failed_is_recovered_once(jobs: Jobs) -> None:
    with pytest.raises(RuntimeError):
        async with jobs.track("ingest", CHAT, BEN, 42, "trial1.txt"):
            raise RuntimeError("the process died here")
    left = await jobs.recover()
    assert [(j.kind, j.chat_id, j.user_id, j.status_message_id, j.label) for j in left] == \
        [("ingest", CHAT, BEN, 42, "trial1.txt")]
    assert [j.label for j in await jobs.recover()] == ["trial1.txt"], "until its user was told, it stays"
    await jobs.settled(left[0])
    assert await jobs.recover() == []


async def test_wait_ended_returns_once_what_was_cancelled_has_ended_and_says_what_still_runs(jobs: Jobs) -> None:
    from bot.telegram.texts import stopped_jobs

    async with jobs.track("summary", CHAT, ANN, None, "notes.txt") as summary:
        with jobs.replying(CHAT, ANN) as reply:
            assert jobs.stoppable(CHAT, ANN) == [reply, summary]
            stopped = jobs.cancel(CHAT, ANN)
            assert jobs.stoppable(CHAT, ANN) == []
        assert await jobs.wait_ended(stopped, timeout_s=0.05) == [summary]  # the reply has ended, not the summary
        assert stopped_jobs(stopped, [summary]) == ("Stopped your reply. Still stopping the summary of notes.txt; "
                                                    "its status line will say when it has ended.")
    assert await jobs.wait_ended(stopped, timeout_s=5) == []
    assert stopped_jobs(stopped, []) == "Stopped your reply and the summary of notes.txt."
