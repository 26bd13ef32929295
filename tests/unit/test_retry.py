"""bot.telegram.retry: which Bot API failures are tried again, and how often."""

from __future__ import annotations

import pytest
from telegram.error import BadRequest, Forbidden, NetworkError, TimedOut

from bot.telegram.retry import RetryingRateLimiter, is_transient


def test_network_failures_are_transient_and_telegrams_refusals_are_not():
    assert is_transient(NetworkError("httpx.ReadError: ")) and is_transient(TimedOut())
    assert not is_transient(BadRequest("Message is not modified")) and not is_transient(Forbidden("blocked"))


def _failing(errors: list[Exception]):
    calls = []

    async def callback(*args, **kwargs):
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return {"message_id": 1}
    return callback, calls


async def _send(limiter: RetryingRateLimiter, callback, endpoint: str = "sendMessage"):
    await limiter.initialize()
    try:
        return await limiter.process_request(callback, (), {}, endpoint, {"chat_id": 1}, None)
    finally:
        await limiter.shutdown()


async def test_a_send_is_tried_until_the_network_lets_it_through():
    callback, calls = _failing([NetworkError("httpx.ReadError: "), TimedOut()])
    assert await _send(RetryingRateLimiter(max_retries=0, first_wait_s=0.01), callback) == {"message_id": 1}
    assert len(calls) == 3


async def test_it_gives_up_after_its_attempts_and_never_retries_a_refusal_or_other_methods():
    callback, calls = _failing([NetworkError("down")] * 5)
    with pytest.raises(NetworkError):
        await _send(RetryingRateLimiter(max_retries=0, attempts=3, first_wait_s=0.01), callback)
    assert len(calls) == 3
    callback, calls = _failing([BadRequest("Bad Request: message text is empty")])
    with pytest.raises(BadRequest):
        await _send(RetryingRateLimiter(max_retries=0, first_wait_s=0.01), callback)
    assert len(calls) == 1
    callback, calls = _failing([NetworkError("down")])
    with pytest.raises(NetworkError):
        await _send(RetryingRateLimiter(max_retries=0, first_wait_s=0.01), callback, "getUpdates")
    assert len(calls) == 1
