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


async def test_the_exit_waits_for_a_thread_until_it_has_ended_not_only_its_work():
    """join_torch_threads joins a thread whose work has returned but which has not ended yet (its OpenMP team is
    torn down with it), and says whether work is still running."""
    from bot.services import compute

    release = threading.Event()
    ended = threading.Event()

    def work():
        return 1

    original = threading.Thread.run

    def run_then_linger(self):  # the thread lives on briefly after its work, as a real one tearing down does
        original(self)
        release.wait(5)
        ended.set()

    threading.Thread.run = run_then_linger
    try:
        assert await in_own_thread(work) == 1
    finally:
        threading.Thread.run = original
    assert not compute.join_torch_threads(timeout_s=0.05)  # its work is done, the thread is not
    release.set()
    assert compute.join_torch_threads(timeout_s=5) and ended.is_set()
