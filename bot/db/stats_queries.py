"""Read-only counts for /stats: a user's messages, reply tokens and documents in one chat (since a time and
in all), and every chat's totals for admins.

Tokens are the bot's replies' token counts (messages.token_count, stored when a reply is finished); the
prompt's tokens are not stored. A reply belongs to the user whose message it answers: its
reply_to_telegram_message_id is that message's Telegram id in the same chat. Documents count when ready;
their uploader is documents.user_id (unknown, NULL, for documents uploaded before revision 0005).
Same conventions as `chat_queries.py`: an AsyncSession in, plain rows out, never a commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.db.tables import Chat, Document, Message, User


@dataclass
class Counts:
    messages: int = 0  # the user's own messages
    tokens: int = 0  # tokens of the bot's replies to them
    documents: int = 0  # ready documents they uploaded


@dataclass
class UserStats:
    since: Counts  # from the `since` given (today, for /stats)
    total: Counts


@dataclass
class ChatTotals:
    chat_id: int
    type: str
    name: str | None  # a group's title, a private chat's @username or first name
    messages: int  # messages people wrote
    tokens: int  # tokens of the bot's replies
    documents: int  # ready documents
    users: int  # distinct people who wrote


def _split(condition: ColumnElement[bool], value, since_condition: ColumnElement[bool]):
    """(sum over all rows, sum over the rows since) of `value` where `condition` holds."""
    return (func.coalesce(func.sum(case((condition, value), else_=0)), 0),
            func.coalesce(func.sum(case((and_(condition, since_condition), value), else_=0)), 0))


async def user_stats(session: AsyncSession, chat_id: int, user_id: int, since: datetime) -> UserStats:
    """What `user_id` did in `chat_id`: in all, and since `since` (timezone-aware)."""
    question = aliased(Message)
    written = (await session.execute(
        select(*_split(Message.role == "user", 1, Message.created_at >= since))
        .where(Message.chat_id == chat_id, Message.user_id == user_id)
    )).one()
    tokens = (await session.execute(
        select(*_split(Message.role == "assistant", func.coalesce(Message.token_count, 0),
                       Message.created_at >= since))
        .join(question, and_(question.chat_id == Message.chat_id,
                             question.telegram_message_id == Message.reply_to_telegram_message_id,
                             question.role == "user"))
        .where(Message.chat_id == chat_id, question.user_id == user_id)
    )).one()
    documents = (await session.execute(
        select(*_split(Document.status == "ready", 1, Document.created_at >= since))
        .where(Document.chat_id == chat_id, Document.user_id == user_id)
    )).one()
    return UserStats(since=Counts(int(written[1]), int(tokens[1]), int(documents[1])),
                     total=Counts(int(written[0]), int(tokens[0]), int(documents[0])))


async def chat_totals(session: AsyncSession) -> list[ChatTotals]:
    """Every chat the bot knows, busiest first: messages, reply tokens, documents and people who wrote."""
    per_chat = (
        select(Message.chat_id,
               func.sum(case((Message.role == "user", 1), else_=0)).label("messages"),
               func.sum(case((Message.role == "assistant", func.coalesce(Message.token_count, 0)), else_=0))
               .label("tokens"),
               func.count(distinct(case((Message.role == "user", Message.user_id)))).label("users"))
        .group_by(Message.chat_id)
        .subquery()
    )
    docs = (
        select(Document.chat_id, func.count().label("documents"))
        .where(Document.status == "ready", Document.chat_id.is_not(None))
        .group_by(Document.chat_id)
        .subquery()
    )
    owner = aliased(User)  # a private chat's id is its user's id
    messages = func.coalesce(per_chat.c.messages, 0)
    rows = await session.execute(
        select(Chat.id, Chat.type, func.coalesce(Chat.title, "@" + owner.username, owner.first_name), messages,
               func.coalesce(per_chat.c.tokens, 0), func.coalesce(docs.c.documents, 0),
               func.coalesce(per_chat.c.users, 0))
        .outerjoin(per_chat, per_chat.c.chat_id == Chat.id)
        .outerjoin(docs, docs.c.chat_id == Chat.id)
        .outerjoin(owner, and_(owner.id == Chat.id, Chat.type == "private"))
        .order_by(messages.desc(), Chat.id)
    )
    return [ChatTotals(chat_id, type_, name, int(m), int(t), int(d), int(u))
            for chat_id, type_, name, m, t, d, u in rows]
