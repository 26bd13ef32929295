"""Chats and their settings: who a message came from, the per-chat system prompt, temperature and training
opt-in, starting a new conversation, and 👍/👎 feedback on replies. Every call records the chat (and its user)
first, so that a group member who never wrote to the bot may still vote or change a setting."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import chat_queries, message_queries
from bot.db.tables import ChatSettings


@dataclass(frozen=True)
class Origin:
    """The chat an action happened in and the user who did it (no Telegram types)."""

    chat_id: int
    chat_type: str
    user_id: int | None = None
    username: str | None = None
    first_name: str | None = None
    title: str | None = None


@dataclass
class ChatPrefs:
    """A chat's settings as they apply: its own where it set one, else the configured default."""

    system_prompt: str
    temperature: float
    allow_training: bool | None  # None: never chosen, `training_default` applies
    training_default: bool

    @property
    def training(self) -> bool:
        return self.training_default if self.allow_training is None else self.allow_training


async def record_origin(session: AsyncSession, origin: Origin) -> None:
    """Create or refresh the chat (and its user) an action came from; commits."""
    await chat_queries.ensure_user_and_chat(session, origin.chat_id, origin.chat_type, origin.user_id, origin.username,
                                            origin.first_name, origin.title)


class Chats:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]):
        self.settings = settings
        self.sessions = sessions

    async def claim_update(self, key: str, update_id: int | None, chat_id: int | None) -> bool:
        """Mark an update handled (bot.telegram.incoming.update_key); False when it was handled before."""
        async with self.sessions() as s:
            return await message_queries.claim_update(s, key, update_id, chat_id)

    async def record(self, origin: Origin) -> None:
        """Record the chat and user of an action whose rows name them (a document, a job, a training run)."""
        async with self.sessions() as s:
            await record_origin(s, origin)

    def applied(self, stored: ChatSettings | None) -> ChatPrefs:
        """The settings that apply, from the chat's stored row (None: a chat never seen)."""
        model = self.settings.model
        return ChatPrefs(
            system_prompt=(stored.system_prompt if stored and stored.system_prompt else None) or model.system_prompt,
            temperature=stored.temperature if stored and stored.temperature is not None else model.temperature,
            allow_training=stored.allow_training if stored is not None else None,
            training_default=self.settings.training.use_chats_by_default)

    async def prefs_in(self, s: AsyncSession, chat_id: int) -> ChatPrefs:
        """The chat's settings as they apply (the defaults for a chat never seen), read in the session `s`."""
        return self.applied(await chat_queries.get_chat_settings(s, chat_id))

    async def prefs_of(self, chat_id: int) -> ChatPrefs:
        """The chat's settings as they apply (the defaults for a chat never seen)."""
        async with self.sessions() as s:
            return await self.prefs_in(s, chat_id)

    async def prefs(self, origin: Origin) -> ChatPrefs:
        """The settings of the chat `origin` is in, the chat recorded first."""
        async with self.sessions() as s:
            await record_origin(s, origin)
            return await self.prefs_in(s, origin.chat_id)

    async def change(self, origin: Origin, **values) -> ChatPrefs:
        """Set some of the chat's settings (system_prompt, temperature, allow_training; None: back to the
        default) and return them all as they now apply. ValueError for a value out of range."""
        async with self.sessions() as s:
            await record_origin(s, origin)
            return self.applied(await chat_queries.set_chat_settings(s, origin.chat_id, **values))

    async def reset(self, origin: Origin) -> None:
        """Start a new conversation; the old one stays in SQL but is no longer sent to the model."""
        async with self.sessions() as s:
            await record_origin(s, origin)
            await chat_queries.start_new_conversation(s, origin.chat_id)

    async def rate(self, origin: Origin, telegram_message_id: int, value: int) -> bool:
        """Record the user's +1/-1 on one of the bot's replies; False when that reply is not known."""
        async with self.sessions() as s:
            await record_origin(s, origin)
            message = await message_queries.message_by_telegram_id(s, origin.chat_id, telegram_message_id)
            if message is None or message.role != "assistant":
                return False
            await message_queries.set_feedback(s, message.id, origin.user_id, value)
            return True
