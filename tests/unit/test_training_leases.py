"""A retraining run under a lease (bot.services.training.service, bot.db.lease_queries), with two replicas' training
services on one real database (SQLite, then PostgreSQL), each with its own data directory and clock: the run
that replica A starts names A and its lease; B cannot start another while it lives, and B's sweep leaves it alone
while A's heartbeat renews it; once A has died and its lease has expired, B takes the run over exactly once and
marks it failed (no checkpoint on B's disk) or resumable (its checkpoint is there), for the admin to be told."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from bot.services.chat_settings import Chats
from bot.services.lm_gateway import ModelManager
from bot.services.training.plan import TrainingOptions
from bot.services.training.service import TrainingBusy, TrainingService
from bot.telegram.training_texts import run_abandoned_text
from tests.unit.test_leases import Clock
from tests.unit.test_training_service import BY_ADMIN, fill, settings_for, timer, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def replica(tmp_path, model, db_url, sessions, name: str, clock: Clock, step_timer) -> TrainingService:
    from bot.services.work_leases import Leases

    settings = settings_for(tmp_path / name, model)
    settings.database.url = db_url
    settings.data_dir.mkdir(parents=True)
    return TrainingService(settings, sessions, ModelManager(settings), Chats(settings, sessions),
                           TrainingOptions(max_steps=4, batch_size=2, block_size=128, eval_batches=2, min_examples=2),
                           timer=step_timer, leases=Leases(sessions, 30.0, shared=True, owner=name, clock=clock))


@pytest.mark.parametrize("checkpoint_on_b", [False, True], ids=["lost", "resumable"])
async def test_a_dead_replicas_training_run_is_taken_over_once_its_lease_expires(
        tmp_path, tiny, timer, db_url, checkpoint_on_b):  # noqa: F811
    await upgrade(db_url)
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    clock_a, clock_b = Clock(T0), Clock(T0)
    a = replica(tmp_path, tiny, db_url, sessions, "a", clock_a, timer)
    b = replica(tmp_path, tiny, db_url, sessions, "b", clock_b, timer)
    try:
        await fill(a)
        run = await a.start(await a.plan(), requested_by=BY_ADMIN)
        await a._update_run(run.id, status="running")  # as a.run() writes it once the run begins
        async with sessions() as s:
            stored = await training_db.get_run(s, run.id)
        assert (stored.owner, stored.lease_until) == ("a", a.leases.lease().until)

        with pytest.raises(TrainingBusy, match=f"run #{run.id} is in progress on another replica"):
            await b.start(await b.plan(), requested_by=BY_ADMIN)
        clock_b.advance(10)
        assert await b.settle_abandoned() == [], "B's sweep while A trains: A's run is left alone"
        clock_a.advance(25)
        assert await a.leases.renew() == 1, "A's heartbeat holds its run"
        clock_b.advance(30)  # 40 s: past A's first lease, within the renewed one
        assert await b.settle_abandoned() == []

        # A dies: no more heartbeats; B's clock passes the renewed lease's end (25 + 30 s)
        if checkpoint_on_b:  # a data directory the replicas share: the run's checkpoint is on B's disk too
            b.paths(run.id).out.mkdir(parents=True)
            b.paths(run.id).checkpoint.write_bytes(b"state")
        clock_b.advance(30)
        settled = await b.settle_abandoned()
        status = "resumable" if checkpoint_on_b else "failed"
        assert [(r.id, r.status, r.owner) for r in settled] == [(run.id, status, "b")]
        assert "the replica running it stopped" in settled[0].error
        assert (settled[0].finished_at is None) is checkpoint_on_b
        assert await b.settle_abandoned() == [], "taken over once"
        text = run_abandoned_text(settled[0])
        assert f"run #{run.id} was interrupted" in text
        assert ("/retrain resume" in text) is checkpoint_on_b
        if checkpoint_on_b:
            assert (await b.resumable()).id == run.id, "B resumes it from the checkpoint on its disk"
        else:
            assert await b.resumable() is None
        async with sessions() as s:
            assert await training_db.live_run(s, clock_b(), "b") is None  # nothing holds B back from a new run
    finally:
        a.job = b.job = None
        await engine.dispose()


async def test_one_process_settles_its_own_unfinished_run_at_start_as_before(tmp_path, tiny, timer,  # noqa: F811
                                                                             sqlite_url):
    """SQLite, one process: a restart settles the run it finds, whoever owned it, without waiting for a lease."""
    from bot.services.work_leases import Leases

    await upgrade(sqlite_url)
    engine = create_engine(sqlite_url)
    sessions = session_factory(engine)
    settings = settings_for(tmp_path, tiny)
    settings.data_dir.mkdir(parents=True)
    try:
        first = TrainingService(settings, sessions, ModelManager(settings), Chats(settings, sessions),
                                TrainingOptions(max_steps=4, batch_size=2, block_size=128, eval_batches=2,
                                                min_examples=2), timer=timer)
        await fill(first)
        run = await first.start(await first.plan(), requested_by=BY_ADMIN)
        await first._update_run(run.id, status="running")
        restarted = TrainingService(settings, sessions, ModelManager(settings), Chats(settings, sessions),
                                    leases=Leases(sessions, 30.0, shared=False))
        assert await restarted.recover() == [(run.id, "failed")]
    finally:
        await engine.dispose()
