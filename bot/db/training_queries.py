"""Read-only queries that gather training data: which chats opted in, their conversations with the net
feedback of every reply, and their documents' chunks.

Kept apart from `queries.py` because only the training service needs them; same conventions (an AsyncSession
in, plain rows out, never a commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Chat, ChatSettings, Chunk, Document, Feedback, Message


@dataclass
class Turn:
    """One stored message with what training needs to know about it."""

    id: int
    conversation_id: int
    chat_id: int
    role: str
    text: str
    status: str
    score: int  # net feedback: sum of the +1/-1 votes (0 when unrated or tied)


@dataclass
class ChunkRow:
    chunk_id: int
    document_id: int
    chat_id: int | None
    document: str
    page: int | None
    heading: str | None
    text: str


async def training_chats(session: AsyncSession, default: bool) -> list[int]:
    """Ids of the chats whose conversations may be trained on: allow_training true, or unset and `default`."""
    allowed = ChatSettings.allow_training.is_(True)
    if default:  # NULL also covers a chat without a settings row (the outer join fills in NULLs)
        allowed = or_(allowed, ChatSettings.allow_training.is_(None))
    stmt = select(Chat.id).outerjoin(ChatSettings, ChatSettings.chat_id == Chat.id).where(allowed).order_by(Chat.id)
    return list(await session.scalars(stmt))


async def system_prompts(session: AsyncSession, chat_ids: Sequence[int]) -> dict[int, str]:
    """The chats' own system prompts (chats without one are absent: they use the configured default)."""
    if not chat_ids:
        return {}
    rows = await session.execute(
        select(ChatSettings.chat_id, ChatSettings.system_prompt)
        .where(ChatSettings.chat_id.in_(chat_ids), ChatSettings.system_prompt.is_not(None))
    )
    return {chat_id: prompt for chat_id, prompt in rows if prompt}


async def conversation_turns(session: AsyncSession, chat_ids: Sequence[int]) -> list[Turn]:
    """Every user and assistant message of these chats, by conversation then in order, with net feedback; not
    the messages that drew on a forgotten document (bot.db.sources)."""
    if not chat_ids:
        return []
    score = (
        select(Feedback.message_id, func.sum(Feedback.value).label("score"))
        .group_by(Feedback.message_id)
        .subquery()
    )
    rows = await session.execute(
        select(Message.id, Message.conversation_id, Message.chat_id, Message.role, Message.text, Message.status,
               func.coalesce(score.c.score, 0))
        .outerjoin(score, score.c.message_id == Message.id)
        .where(Message.chat_id.in_(chat_ids), Message.role.in_(("user", "assistant")),
               Message.forgotten_at.is_(None))
        .order_by(Message.conversation_id, Message.id)
    )
    return [Turn(*row[:6], score=int(row[6])) for row in rows]


async def training_chunks(session: AsyncSession, chat_ids: Sequence[int]) -> list[ChunkRow]:
    """The chunks of the ready documents uploaded in these chats, in reading order."""
    if not chat_ids:
        return []
    rows = await session.execute(
        select(Chunk.id, Chunk.document_id, Document.chat_id, Document.name, Chunk.page, Chunk.heading, Chunk.text)
        .join(Document, Document.id == Chunk.document_id)
        .where(Document.chat_id.in_(chat_ids), Document.status == "ready")
        .order_by(Chunk.document_id, Chunk.ordinal)
    )
    return [ChunkRow(*row) for row in rows]
