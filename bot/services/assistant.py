"""Replying in a conversation: store what was said, build the prompt from SQL history, stream the reply.

SQL is the source of truth. A user message is stored together with its update id (exactly once); the
reply is stored as a "streaming" row before generation starts and completed afterwards, so a restart
can find replies it cut off and mark them.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import chats as chats_db
from bot.db import messages as messages_db
from bot.db import sources
from bot.db.models import Message
from bot.services import answer
from bot.services.knowledge import KnowledgeBase, chat_scope
from bot.services.models import ChatModel, ModelManager, Sampling
from lm.serve import Queued, Started  # noqa: F401 (reply events, for the handlers)

INTERRUPTED_NOTE = "⚠️ This reply was interrupted by a restart. Please send your message again."


@dataclass
class Incoming:
    """A text message as the services see it (no Telegram types)."""

    update_id: int
    chat_id: int
    chat_type: str
    user_id: int | None
    text: str
    telegram_message_id: int | None
    username: str | None = None
    first_name: str | None = None
    title: str | None = None
    reply_to_telegram_message_id: int | None = None


@dataclass
class Prepared:
    """The reply to prepare: a chat reply from `messages`, or a document answer that is already complete."""

    messages: list[dict]
    answer: answer.Answer | None = None


class Assistant:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models: ModelManager,
                 knowledge: KnowledgeBase | None = None):
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.knowledge = knowledge

    async def accept(self, msg: Incoming) -> Message | None:
        """Store the user's message once; None means this update was already handled."""
        async with self.sessions() as s:
            await chats_db.ensure_user_and_chat(s, msg.chat_id, msg.chat_type, msg.user_id, msg.username,
                                         msg.first_name, msg.title)
            return await messages_db.record_update_and_user_message(
                s, msg.update_id, msg.chat_id, msg.user_id, msg.text, msg.telegram_message_id,
                msg.reply_to_telegram_message_id)

    async def sampling_for(self, chat_id: int, **overrides) -> Sampling:
        async with self.sessions() as s:
            prefs = await chats_db.get_chat_settings(s, chat_id)
        if prefs is not None and prefs.temperature is not None:
            overrides.setdefault("temperature", prefs.temperature)
        return Sampling.from_settings(self.settings.model, **overrides)

    async def system_prompt(self, chat_id: int) -> str:
        async with self.sessions() as s:
            prefs = await chats_db.get_chat_settings(s, chat_id)
        return (prefs.system_prompt if prefs and prefs.system_prompt else None) or self.settings.model.system_prompt

    async def turns(self, conversation_id: int) -> list[Message]:
        """The conversation's stored user and assistant messages that go into a prompt, oldest first."""
        async with self.sessions() as s:
            rows = await messages_db.history(s, conversation_id, limit=200)
        return [m for m in rows if m.role in ("user", "assistant") and m.text]

    async def conversation(self, chat_id: int, conversation_id: int,
                           turns: list[Message] | None = None) -> list[dict]:
        """The system prompt plus this conversation's stored turns (or the `turns` given), oldest first."""
        rows = await self.turns(conversation_id) if turns is None else turns
        return [{"role": "system", "content": await self.system_prompt(chat_id)},
                *({"role": m.role, "content": m.text} for m in rows)]

    async def prepare(self, model: ChatModel, question: Message, reply: Message,
                      force_documents: bool = False) -> Prepared:
        """The reply to the conversation's last user message, `question`; `reply` is its stored reply row.

        In a chat with documents, a message that retrieval finds them to be about is answered from them
        (answer.answer_question); small talk and general questions there, and every message in a chat without
        documents, get a chat reply. `/ask` (force_documents) always answers from the documents. The documents
        the reply draws on, by its answer or through its prompt, are recorded against the turn (bot.db.sources),
        so that forgetting one of them takes the turn out of later prompts and training data.
        """
        turns = await self.turns(question.conversation_id)
        messages = await self.conversation(question.chat_id, question.conversation_id, turns)
        prepared = Prepared(messages)
        scope = chat_scope(question.chat_id)
        if self.knowledge is not None and (force_documents or await self.knowledge.has_documents(scope)):
            earlier = [m["content"] for m in messages[1:-1] if m["role"] == "user"]
            result = await answer.answer_question(messages[-1]["content"], knowledge=self.knowledge, model=model,
                                                  scope=scope, recent_questions=earlier, force=force_documents)
            if result.about_documents or force_documents:
                prepared.answer = result
        read = prepared.answer.evidence if prepared.answer is not None else []  # what the answer was drawn from
        async with self.sessions() as s:
            await sources.record_sources(s, [question.id, reply.id], [e.passage.chunk_id for e in read],
                                         [m.id for m in turns])
        return prepared

    async def begin_reply(self, user_message: Message, telegram_message_id: int | None,
                          version_id: int | None = None) -> Message:
        async with self.sessions() as s:
            return await messages_db.add_assistant_message(
                s, user_message.conversation_id, user_message.chat_id, text="", status="streaming",
                telegram_message_id=telegram_message_id,
                reply_to_telegram_message_id=user_message.telegram_message_id, model_version_id=version_id)

    async def finish_reply(self, reply: Message, text: str, status: str, token_count: int | None = None,
                           version_id: int | None = None) -> None:
        """Store the reply's text and status (and the model version that wrote it, once known)."""
        async with self.sessions() as s:
            await messages_db.update_message(s, reply.id, text=text, status=status, token_count=token_count,
                                   model_version_id=version_id)

    async def stream(self, model: ChatModel, messages: list[dict], sampling: Sampling,
                     cancel: threading.Event) -> AsyncIterator:
        """The model's reply as it is generated: text deltas (str), and lm.serve.Queued / Started while it
        waits for its place in the batch (ChatModel.reply_events)."""
        async for event in model.reply_events(messages, sampling, cancel):
            yield event

    async def reset(self, chat_id: int) -> None:
        """Start a new conversation; the old one stays in SQL but is no longer sent to the model."""
        async with self.sessions() as s:
            await chats_db.start_new_conversation(s, chat_id)

    async def recover(self) -> tuple[list[Message], list[Message]]:
        """Replies a crash or restart left "streaming": (finished but maybe not delivered, cut off).

        A reply whose generation finished carries its token count and final text, so it can be delivered
        again (an edit to the same text is harmless); one cut off mid-generation is marked interrupted, with
        a note, and returned so that the note can be shown in Telegram too.
        """
        finished, cut = [], []
        async with self.sessions() as s:
            for m in await messages_db.interrupted_messages(s):
                if m.token_count is not None:
                    finished.append(m)
                    continue
                text = (m.text + "\n\n" if m.text else "") + INTERRUPTED_NOTE
                await messages_db.update_message(s, m.id, text=text, status="interrupted")
                m.text = text
                cut.append(m)
        return finished, cut

    async def set_feedback(self, chat_id: int, telegram_message_id: int, user_id: int, value: int) -> bool:
        async with self.sessions() as s:
            message = await messages_db.message_by_telegram_id(s, chat_id, telegram_message_id)
            if message is None or message.role != "assistant":
                return False
            await messages_db.set_feedback(s, message.id, user_id, value)
            return True
