"""One reply in flight per user: a second message waits briefly for the first, else is told to wait."""

from __future__ import annotations

import asyncio

from bot.config import Settings
from bot.handlers.runtime import Runtime
from bot.services.models import ModelManager


def _runtime(tmp_path) -> Runtime:
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path)
    return Runtime(settings, sessions=None, models=ModelManager(settings))


async def test_second_message_waits_for_a_reply_that_is_finishing(tmp_path):
    rt, order = _runtime(tmp_path), []

    async def first():
        async with rt.one_at_a_time(7) as free:
            order.append(("first", free))
            await asyncio.sleep(0.2)

    async def second():
        await asyncio.sleep(0.05)
        async with rt.one_at_a_time(7, wait_s=2.0) as free:
            order.append(("second", free))

    await asyncio.gather(first(), second())
    assert order == [("first", True), ("second", True)]


async def test_second_message_is_refused_while_a_long_reply_runs_and_other_users_are_free(tmp_path):
    rt = _runtime(tmp_path)
    async with rt.one_at_a_time(7) as free:
        assert free
        async with rt.one_at_a_time(7, wait_s=0.1) as again:
            assert again is False
        async with rt.one_at_a_time(8, wait_s=0.1) as other:
            assert other is True
    async with rt.one_at_a_time(7, wait_s=0.1) as after:
        assert after is True
