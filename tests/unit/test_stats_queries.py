"""The /stats counts against real SQLite and PostgreSQL databases, migrated to head: a user's own messages,
reply tokens and documents in one chat (recent and in all), never another user's or another chat's, and
every chat's totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import chat_queries, document_queries, message_queries, stats_queries
from bot.db.tables import Document, Message

GROUP = -1001234567890123
ANN, BOB, CAROL = 5_000_000_001, 5_000_000_002, 5_000_000_003
OLD = datetime.now(UTC) - timedelta(days=3)
SINCE = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture
def s(db_session: AsyncSession) -> AsyncSession:
    return db_session


async def said(s: AsyncSession, chat: int, user: int, update_id: int, tokens: int | None, old: bool = False,
               telegram_id: int | None = None) -> None:
    """A user's message and the bot's reply to it (tokens None: the reply failed and has no count)."""
    telegram_id = telegram_id or update_id
    question = await message_queries.record_update_and_user_message(s, update_id, chat, user, f"question {update_id}", telegram_id)
    reply = await message_queries.add_assistant_message(s, question.conversation_id, chat, "answer",
                                                        status="complete" if tokens is not None else "failed",
                                                        telegram_message_id=telegram_id + 10_000,
                                                        reply_to_telegram_message_id=telegram_id, token_count=tokens)
    if old:
        await s.execute(update(Message).where(Message.id.in_([question.id, reply.id])).values(created_at=OLD))
        await s.commit()


async def uploaded(s: AsyncSession, chat: int, user: int | None, sha: str, status: str = "ready",
                   old: bool = False) -> None:
    doc = await document_queries.add_document_with_chunks(
        s, scope=f"chat:{chat}", chat_id=chat, user_id=user, name=f"{sha}.md", mime="text/markdown", sha256=sha * 64,
        size_bytes=1, chunks=[], status=status)
    if old:
        await s.execute(update(Document).where(Document.id == doc.id).values(created_at=OLD))
        await s.commit()


async def fill(s: AsyncSession) -> None:
    await chat_queries.ensure_user_and_chat(s, GROUP, "supergroup", ANN, "ann", "Ann", title="team")
    await chat_queries.ensure_user_and_chat(s, GROUP, "supergroup", BOB, None, "Bob", title="team")
    await chat_queries.ensure_user_and_chat(s, ANN, "private", ANN, "ann", "Ann")
    await chat_queries.ensure_user_and_chat(s, CAROL, "private", CAROL, None, "Carol")  # never wrote
    await said(s, GROUP, ANN, 1, tokens=10, old=True)
    await said(s, GROUP, ANN, 2, tokens=20)
    await said(s, GROUP, ANN, 3, tokens=None)
    await said(s, GROUP, BOB, 4, tokens=5)
    await said(s, ANN, ANN, 5, tokens=7, telegram_id=2)  # the same Telegram id as a group message
    await uploaded(s, GROUP, ANN, "a")
    await uploaded(s, GROUP, ANN, "b", old=True)
    await uploaded(s, GROUP, ANN, "c", status="failed")
    await uploaded(s, GROUP, BOB, "d")
    await uploaded(s, GROUP, None, "e")  # uploaded before uploaders were recorded
    await uploaded(s, ANN, ANN, "f")


async def test_a_users_stats_count_their_own_messages_reply_tokens_and_documents_in_this_chat(s):
    await fill(s)
    ann = await stats_queries.user_stats(s, GROUP, ANN, SINCE)
    assert ann.total == stats_queries.Counts(messages=3, tokens=30, documents=2)  # a failed reply counts no tokens
    assert ann.since == stats_queries.Counts(messages=2, tokens=20, documents=1)  # the old message and document are out
    assert await stats_queries.user_stats(s, GROUP, BOB, SINCE) == stats_queries.UserStats(stats_queries.Counts(1, 5, 1), stats_queries.Counts(1, 5, 1))
    # Ann's private chat is another chat: its reply, to a message with a group message's Telegram id, stays there
    assert (await stats_queries.user_stats(s, ANN, ANN, SINCE)).total == stats_queries.Counts(messages=1, tokens=7, documents=1)
    assert await stats_queries.user_stats(s, GROUP, CAROL, SINCE) == stats_queries.UserStats(stats_queries.Counts(), stats_queries.Counts())


async def test_chat_totals_cover_every_chat_busiest_first(s):
    await fill(s)
    totals = await stats_queries.chat_totals(s)
    assert totals == [
        stats_queries.ChatTotals(GROUP, "supergroup", "team", messages=4, tokens=35, documents=4, users=2),
        stats_queries.ChatTotals(ANN, "private", "@ann", messages=1, tokens=7, documents=1, users=1),
        stats_queries.ChatTotals(CAROL, "private", "Carol", messages=0, tokens=0, documents=0, users=0),
    ]
