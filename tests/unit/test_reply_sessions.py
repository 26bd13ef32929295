"""A reply's trips to SQL, counted: storing the message with its reply row, reading what the prompt is built from
(turns and the chat's settings in one go), and finishing the reply take at most four sessions, in a chat without
documents and in one with them. The knowledge base's own reads while it retrieves passages are counted apart.
Real services on SQLite, a tiny random chat model, the real MiniLM encoder for the document."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.config import Settings, env_cache_dir
from bot.db.session import create_engine, session_factory, upgrade
from bot.db.tables import Message, MessageSource
from bot.services import build_services
from bot.services.assistant import Accepted, Assistant, Done, Incoming
from bot.services.chat_settings import Origin
from bot.services.conversation_store import ConversationStore
from bot.services.knowledge import chat_scope
from bot.services.lm_gateway import ChatModel, ModelManager
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
MAX_SESSIONS = 4
MEMO = b"The launch code of Project Nightjar is ZEBRA-7731.\n"


class CountingSessions:
    """The real async_sessionmaker, counting the sessions opened through it."""

    def __init__(self, sessions):
        self.sessions, self.opened = sessions, 0

    def __call__(self, **kw):
        self.opened += 1
        return self.sessions(**kw)


@pytest.fixture
async def bot(tmp_path):
    model = write_tiny_gguf(tmp_path / "tiny.gguf", max_seq_len=1024).path
    settings = Settings(data_dir=tmp_path / "data", cache_dir=env_cache_dir())
    settings.model.name, settings.model.weights = str(model), "fp32"
    settings.model.max_new_tokens, settings.model.context_tokens = 8, 512
    url = f"sqlite+aiosqlite:///{tmp_path / 'docent.db'}"
    await upgrade(url)
    engine = create_engine(url)
    everything = CountingSessions(session_factory(engine))  # every service's sessions
    services = build_services(settings, everything, ModelManager(settings, ChatModel.load(settings)))
    replies = CountingSessions(session_factory(engine))  # the reply's own: its store's
    assistant = Assistant(settings, ConversationStore(replies, services.chats, services.leases), services.models,
                          services.knowledge, services.jobs)
    yield services, assistant, everything, replies
    services.models.close()
    await engine.dispose()


async def _reply(assistant: Assistant, chat: int, n: int, text: str, force_documents: bool = False) -> Done:
    incoming = Incoming(Origin(chat, "private", chat), f"turn:{chat}:{n}", text, 100 + n)
    done = None
    async for event in assistant.reply(incoming, force_documents):
        if isinstance(event, Accepted):
            event.shown_in = 1000 + n  # the Telegram message the caller showed it in
        elif isinstance(event, Done):
            done = event
    assert done is not None
    return done


async def _stored_reply(services, chat: int) -> Message:
    async with services.sessions() as s:
        return await s.scalar(select(Message).where(Message.chat_id == chat, Message.role == "assistant")
                              .order_by(Message.id.desc()).limit(1))


async def test_a_reply_in_a_chat_without_documents_opens_at_most_four_sessions(bot):
    services, assistant, everything, replies = bot
    for n, text in enumerate(["Hello there", "What is a cat?", "Tell me more."], 1):
        everything.opened = replies.opened = 0
        done = await _reply(assistant, 7, n, text)
        assert done.rated
        assert replies.opened <= MAX_SESSIONS
        assert everything.opened == 0  # no other service goes to SQL for it
        stored = await _stored_reply(services, 7)
        assert (stored.status, stored.text, stored.telegram_message_id) == ("complete", done.text, 1000 + n)


async def test_a_reply_in_a_chat_with_documents_opens_at_most_four_sessions(bot):
    services, assistant, everything, replies = bot
    await services.chats.record(Origin(8, "private", 8))  # an upload names its chat
    await services.knowledge.ingest(chat_scope(8), MEMO, "memo.txt", "text/plain", chat_id=8)
    for n, (text, force) in enumerate([("What is the launch code of Project Nightjar?", True),
                                       ("And who wrote it?", False)], 1):
        everything.opened = replies.opened = 0
        done = await _reply(assistant, 8, n, text, force_documents=force)
        assert replies.opened <= MAX_SESSIONS
        stored = await _stored_reply(services, 8)
        assert (stored.status, stored.telegram_message_id) == ("complete", 1000 + n)
        if force:
            assert "ZEBRA-7731" in done.text
            async with services.sessions() as s:  # the answer and its question are linked to the memo
                linked = set(await s.scalars(select(MessageSource.message_id)))
            assert {stored.id, stored.id - 1} <= linked
