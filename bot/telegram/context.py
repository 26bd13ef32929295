"""What every handler reaches through python-telegram-bot's context: the services (built once by bot.app) and
the guards that run before any work: allow-list, rate limit, one reply in flight per user."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from telegram import Update
from telegram.ext import ContextTypes

from bot.services import Services
from bot.services.chat_settings import Origin
from bot.telegram import texts, training_texts
from bot.telegram.access import RateLimiter, is_admin, is_allowed


class Runtime:
    def __init__(self, services: Services):
        self.services = services
        self.settings = services.settings
        self.limiter = RateLimiter(services.settings.telegram.rate_limit_per_minute)
        self._busy: dict[int, asyncio.Lock] = {}

    async def admit(self, update: Update, rate_limited: bool = False, admins: bool = False) -> bool:
        """Refuse politely, storing nothing, when the user or chat may not use the bot or is too fast; with
        `admins`, anyone but the bot's admins. A button press is refused in its answer, not in a message."""
        message, query, user = update.effective_message, update.callback_query, update.effective_user
        if admins:
            if is_admin(self.settings.telegram, user.id if user else None):
                return True
            if query is not None:
                await query.answer(training_texts.ADMINS_ONLY)
            elif message is not None:
                await message.reply_text(training_texts.ADMINS_ONLY)
            return False
        if not is_allowed(self.settings.telegram, update):
            if query is not None:
                await query.answer(texts.NOT_ALLOWED_BUTTON)
            elif message is not None and update.effective_chat.type == "private":
                await message.reply_text(texts.NOT_ALLOWED)
            return False
        if rate_limited and user is not None and not self.limiter.allow(user.id):
            if message is not None:
                await message.reply_text(texts.TOO_FAST)
            return False
        return True

    @contextlib.asynccontextmanager
    async def turn_of(self, key: int, on_wait: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        """One reply in flight per user, in order: a message sent while the previous reply is being written
        waits for it (`on_wait` is awaited first, to tell the user), then is answered with that reply in its
        history."""
        lock = self._busy.setdefault(key, asyncio.Lock())  # asyncio.Lock wakes its waiters first come, first served
        if lock.locked() and on_wait is not None:
            await on_wait()
        async with lock:
            yield


def runtime(context: ContextTypes.DEFAULT_TYPE) -> Runtime:
    return context.application.bot_data["runtime"]


def origin_of(update: Update) -> Origin:
    """The chat and user of an update, as the services take them."""
    chat, user = update.effective_chat, update.effective_user
    return Origin(chat_id=chat.id, chat_type=chat.type, user_id=user.id if user else None,
                  username=user.username if user else None, first_name=user.first_name if user else None,
                  title=chat.title)
