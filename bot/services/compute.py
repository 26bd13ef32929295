"""Where the bot's torch work runs, outside the generation server's own thread.

torch's OpenMP runtime (libgomp) keeps a team of worker threads for every thread that has run a parallel
region, for as long as that thread lives. Once those teams hold more threads than there are cores, libgomp
stops spinning at its barriers and every parallel region in the process slows down: a batch-8 decode step took
23 ms alone and 34-40 ms once one other live thread had done a single 2-thread matmul (bench/serve.py measures
the bot's path against bench/generate.py). A pool thread of asyncio.to_thread lives on, so torch work (the
encoder, loading a model) runs in a thread of its own that ends with it, and its team with it.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_live: set[threading.Thread] = set()  # the torch threads still running (join_torch_threads at exit)


async def in_own_thread(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a new thread that exits when it returns; awaits its result (or raises its error)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():  # the awaiting side may have been cancelled meanwhile
            setter(value)

    def run() -> None:
        try:
            outcome = (future.set_result, fn(*args))
        except BaseException as e:
            outcome = (future.set_exception, e)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop has closed (the bot stopped): nobody waits for this any more
            pass

    thread = threading.Thread(target=run, name="docent-torch", daemon=True)
    # a thread stays in _live until it has ended, not only its torch work: its OpenMP team goes with the thread,
    # and a process that exits while one is torn down aborts as a thread still in torch does
    _live.difference_update([t for t in list(_live) if not t.is_alive()])
    _live.add(thread)
    thread.start()
    return await future


def join_torch_threads(timeout_s: float) -> bool:
    """Wait, before the process exits, for torch work still running in its own threads (an upload's embedding
    batch that was asked to stop finishes that batch first): a daemon thread still inside torch when the
    interpreter finalizes aborts the process ("terminate called without an active exception", exit code 134).
    Whether they all ended within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for thread in list(_live):
        thread.join(max(0.0, deadline - time.monotonic()))
    _live.difference_update([t for t in list(_live) if not t.is_alive()])
    return not _live


def release_freed_memory() -> None:
    """Hand memory that has been freed back to the operating system (glibc's malloc_trim; nothing elsewhere).

    glibc keeps freed heap in each thread's arena, and raises its mmap threshold after every large free, so the
    encoder's activations (tens of MB a batch, from a new thread each time) pile up as resident memory that is
    free but never returned. Over the first 35% of a 20 MB upload (bench/ingest_memory.py) the process grew
    from 634 to 825 MB without a trim after each batch, and from 675 to 757 MB with it.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
