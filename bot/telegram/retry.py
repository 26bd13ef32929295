"""Bot API calls that show the user something are retried when the network fails them for a moment.

Under a burst of updates, a connection to the Bot API can be dropped or reset (httpx.ReadError,
RemoteProtocolError, ConnectError, a timeout: python-telegram-bot raises NetworkError or TimedOut), and a reply
whose sendMessage or editMessageText met one was lost with a traceback. Every request goes through the
Application's rate limiter, so retrying there covers every handler's replies, placeholders and status lines.
A refusal (BadRequest, Forbidden, RetryAfter) is an answer, not a network failure, and is never retried here.

A retried sendMessage whose first try reached Telegram before the connection failed shows twice: a rare
duplicate is better than a question left unanswered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import BadRequest, NetworkError
from telegram.ext import AIORateLimiter

log = logging.getLogger(__name__)

# what a user sees or waits on; getUpdates has its own retry loop in python-telegram-bot's Updater
RETRIED = frozenset({"sendMessage", "editMessageText", "editMessageReplyMarkup", "sendChatAction",
                     "deleteMessage", "answerCallbackQuery", "sendDocument", "setMyCommands"})


def is_transient(exc: BaseException) -> bool:
    """A network failure worth another try: NetworkError (TimedOut included), but not BadRequest, which
    python-telegram-bot also derives from NetworkError although it is Telegram's answer."""
    return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)


class RetryingRateLimiter(AIORateLimiter):
    """AIORateLimiter that also retries transient network errors of the RETRIED methods, with backoff."""

    def __init__(self, *, attempts: int = 5, first_wait_s: float = 0.5, max_wait_s: float = 8.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.attempts, self.first_wait_s, self.max_wait_s = attempts, first_wait_s, max_wait_s

    async def process_request(self, callback: Callable[..., Coroutine[Any, Any, Any]], args: Any,
                              kwargs: dict[str, Any], endpoint: str, data: dict[str, Any],
                              rate_limit_args: int | None) -> Any:
        attempts = self.attempts if endpoint in RETRIED else 1
        for attempt in range(1, attempts + 1):
            try:
                return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
            except Exception as e:
                if not is_transient(e) or attempt == attempts:
                    raise
                wait = min(self.first_wait_s * 2 ** (attempt - 1), self.max_wait_s)
                log.warning("%s to chat %s failed (%s); trying again in %.1f s (attempt %d of %d)", endpoint,
                            data.get("chat_id"), e, wait, attempt, attempts)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")
