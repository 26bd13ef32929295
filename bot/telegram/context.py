"""The services every handler needs, and the guards that run before any work: allow-list, rate limit,
one reply in flight per user."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Update

from bot.config import Settings
from bot.db import chats as chats_db
from bot.services.assistant import Assistant
from bot.services.jobs import Jobs
from bot.services.knowledge import KnowledgeBase
from bot.services.models import ModelManager
from bot.telegram.access import RateLimiter, is_allowed

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models: ModelManager):
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.knowledge = KnowledgeBase(settings, sessions)
        self.assistant = Assistant(settings, sessions, models, self.knowledge)
        self.jobs = Jobs(sessions)  # uploads being indexed and summaries being written
        self.limiter = RateLimiter(settings.telegram.rate_limit_per_minute)
        self._busy: dict[int, asyncio.Lock] = {}
        self.extras: dict[str, Any] = {}  # services added by other features (documents, training)

    async def admit(self, update: Update, rate_limited: bool = False) -> bool:
        """Refuse politely, storing nothing, when the user or chat may not use the bot or is too fast."""
        message = update.effective_message
        if not is_allowed(self.settings.telegram, update):
            if message is not None and update.effective_chat.type == "private":
                await message.reply_text("Sorry, this bot is private and you are not on its list of users.")
            return False
        user = update.effective_user
        if rate_limited and user is not None and not self.limiter.allow(user.id):
            if message is not None:
                await message.reply_text("You are sending messages too fast. Please wait a minute and try again.")
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

    async def ensure_chat(self, update: Update) -> None:
        chat, user = update.effective_chat, update.effective_user
        async with self.sessions() as s:
            await chats_db.ensure_user_and_chat(s, chat.id, chat.type, user.id if user else None,
                                         user.username if user else None, user.first_name if user else None,
                                         chat.title)

    async def set_chat_settings(self, chat_id: int, **values: Any) -> None:
        async with self.sessions() as s:
            await chats_db.set_chat_settings(s, chat_id, **values)
