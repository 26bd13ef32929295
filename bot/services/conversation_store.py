"""The SQL of a reply, in as few sessions as a reply can take: the user's message and the reply's row stored at
once, what the prompt is built from read at once, the reply's end written.

SQL is the source of truth. A user message is stored together with its update's key (exactly once); the
reply is stored as a "streaming" row before anything slow, and completed afterwards, so a restart can find
replies it cut off and mark them. The documents a reply draws on, through its prompt or its answer, are linked
to the turn (bot.db.sources), so that forgetting one of them takes the turn out of later prompts and training.

A reply opens four sessions: `begin`, `context`, `finish_reply` with the final text ("streaming", with its token count)
and `finish_reply` once it is shown ("complete"); one that fails, three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db import chat_queries, document_queries, message_queries, sources
from bot.db.tables import Message
from bot.services.chat_settings import ChatPrefs, Chats, Origin, record_origin
from bot.services.knowledge import chat_scope
from bot.services.work_leases import Leases


@dataclass
class Incoming:
    """A text message as the services see it (no Telegram types)."""

    origin: Origin
    update_key: str  # what the update is (bot.db.tables.ProcessedUpdate), not the Bot API's number for it
    text: str
    telegram_message_id: int | None
    reply_to_telegram_message_id: int | None = None


@dataclass
class Context:
    """What a reply is written from, read in one session."""

    turns: list[Message]  # the conversation's turns up to and with the question, oldest first
    prefs: ChatPrefs  # the chat's system prompt and temperature
    has_documents: bool  # the chat has documents to answer from
    had_documents: bool  # it has none, but had some that were forgotten (a reply then says it is not from them)

    @property
    def messages(self) -> list[dict]:
        """The prompt: the system prompt, then the turns."""
        return chat_messages(self.prefs, self.turns)


def chat_messages(prefs: ChatPrefs, turns: list[Message]) -> list[dict]:
    return [{"role": "system", "content": prefs.system_prompt},
            *({"role": m.role, "content": m.text} for m in turns)]


async def _turns(s: AsyncSession, conversation_id: int, up_to: int | None = None) -> list[Message]:
    """The conversation's stored user and assistant messages that go into a prompt, oldest first (up to the
    message with id `up_to`: a message stored while waiting for its turn is not part of earlier replies)."""
    rows = await message_queries.history(s, conversation_id, limit=200, up_to=up_to)
    return [m for m in rows if m.role in ("user", "assistant") and m.text]


async def _record_shown(s: AsyncSession, reply: Message, telegram_message_id: int) -> None:
    """The Telegram message that shows the reply, stored (a restart edits it) and set on the row in hand."""
    await message_queries.update_message(s, reply.id, telegram_message_id=telegram_message_id)
    reply.telegram_message_id = telegram_message_id


class ConversationStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], chats: Chats, leases: Leases):
        self.sessions, self.chats, self.leases = sessions, chats, leases

    async def begin(self, msg: Incoming) -> tuple[Message, Message] | None:
        """Store the user's message once, with the empty row of the reply to it: (question, reply); None means
        this update was already handled."""
        async with self.sessions() as s:
            await record_origin(s, msg.origin)
            return await message_queries.record_update_and_turn(
                s, msg.update_key, msg.origin.chat_id, msg.origin.user_id, msg.text, msg.telegram_message_id,
                msg.reply_to_telegram_message_id, lease=self.leases.lease())

    async def context(self, question: Message, reply: Message, shown_in: int | None) -> Context:
        """Record the Telegram message that shows the reply (`shown_in`, when there is one: a restart edits it),
        read what the reply is written from, and link the turn to the documents its prompt draws on."""
        async with self.sessions() as s:
            if shown_in is not None:
                await _record_shown(s, reply, shown_in)
            turns = await _turns(s, question.conversation_id, up_to=question.id)
            prefs = await self.chats.prefs_in(s, question.chat_id)
            has = await document_queries.has_documents(s, chat_scope(question.chat_id))
            had = not has and await message_queries.has_forgotten(s, question.chat_id)
            await sources.record_sources(s, [question.id, reply.id], [], [m.id for m in turns])
        return Context(turns, prefs, has, had)

    async def show_reply_in(self, reply: Message, telegram_message_id: int) -> None:
        """Record the Telegram message that shows the reply (and that a restart edits)."""
        async with self.sessions() as s:
            await _record_shown(s, reply, telegram_message_id)

    async def finish_reply(self, reply: Message, text: str, status: str, token_count: int | None = None,
                           version_id: int | None = None, question: Message | None = None,
                           chunk_ids: Sequence[int] = ()) -> None:
        """Store the reply's text and status (and the model version that wrote it, once known); with
        `chunk_ids`, first link the turn (`question` and reply) to the documents of the passages it was answered
        from."""
        async with self.sessions() as s:
            if chunk_ids and question is not None:
                await sources.record_sources(s, [question.id, reply.id], chunk_ids, [])
            await message_queries.update_message(s, reply.id, text=text, status=status, token_count=token_count,
                                                 model_version_id=version_id)

    async def conversation(self, chat_id: int, conversation_id: int) -> list[dict]:
        """The system prompt plus the conversation's stored turns, oldest first."""
        async with self.sessions() as s:
            turns = await _turns(s, conversation_id)
            prefs = await self.chats.prefs_in(s, chat_id)
        return chat_messages(prefs, turns)

    async def current_conversation(self, chat_id: int) -> list[dict]:
        """The chat's open conversation as `conversation` gives it (started if it has none)."""
        async with self.sessions() as s:
            conversation = await chat_queries.current_conversation(s, chat_id)
        return await self.conversation(chat_id, conversation.id)

    async def recover(self) -> tuple[list[Message], list[Message]]:
        """Replies a crash or restart left "streaming", now held by this process's lease: (finished but maybe
        not delivered: they carry their token count, cut off mid-generation)."""
        finished, cut = [], []
        async with self.sessions() as s:
            for m in await message_queries.interrupted_messages(s, self.leases.lease(), self.leases.expired_before()):
                (finished if m.token_count is not None else cut).append(m)
        return finished, cut
