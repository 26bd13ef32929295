"""bot.services.compute: torch work outside the server runs in a thread that ends with it."""

from __future__ import annotations

import threading

import pytest

from bot.services.compute import in_own_thread


async def test_the_work_runs_in_a_thread_of_its_own_that_is_gone_afterwards():
    seen = {}

    def work(a, b):
        seen["thread"] = threading.current_thread()
        return a + b

    assert await in_own_thread(work, 2, 3) == 5
    assert seen["thread"] is not threading.main_thread()
    seen["thread"].join(timeout=5)
    assert not seen["thread"].is_alive()  # its OpenMP team, if torch made one, went with it


async def test_an_error_in_the_work_is_raised_to_the_caller():
    def fail():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await in_own_thread(fail)
