"""One reply in flight per user: a second message waits for the first, in order, and is told it waits."""

from __future__ import annotations

import asyncio

from bot.config import Settings
from bot.services import build_services
from bot.telegram.context import Runtime


def _runtime(tmp_path) -> Runtime:
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path)
    return Runtime(build_services(settings, sessions=None))


async def test_messages_of_one_user_are_answered_in_order_after_each_other(tmp_path):
    rt, order, told = _runtime(tmp_path), [], []

    async def message(name: str, delay: float, work: float):
        await asyncio.sleep(delay)

        async def on_wait():
            told.append(name)

        async with rt.turn_of(7, on_wait):
            order.append(f"{name} starts")
            await asyncio.sleep(work)
            order.append(f"{name} ends")

    await asyncio.gather(message("first", 0, 0.3), message("second", 0.05, 0), message("third", 0.1, 0))
    assert order == ["first starts", "first ends", "second starts", "second ends", "third starts", "third ends"]
    assert told == ["second", "third"]  # each waiting message was told so before it waited


async def test_other_users_do_not_wait_and_a_free_turn_tells_nothing(tmp_path):
    rt, told = _runtime(tmp_path), []

    async def on_wait():
        told.append("waited")

    async with rt.turn_of(7, on_wait):
        async with asyncio.timeout(1):
            async with rt.turn_of(8, on_wait):  # another user: at once
                pass
    async with rt.turn_of(7, on_wait):  # free again
        pass
    assert told == []
