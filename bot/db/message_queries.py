"""Messages: a user's message stored once per Telegram update, the assistant's reply row as it streams, the
history a prompt is built from, and users' 👍/👎 feedback on replies. Conventions as in `chat_queries.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.chat_queries import conversation_for_update
from bot.db.lease_queries import Lease, take_abandoned
from bot.db.session import check_choice, upsert
from bot.db.tables import Feedback, Message, MessageStatus, ProcessedUpdate

# ---- messages -----------------------------------------------------------------------------------


async def record_update_and_user_message(
    session: AsyncSession,
    update_key: str | int,
    chat_id: int,
    user_id: int | None,
    text: str,
    telegram_message_id: int | None,
    reply_to_telegram_message_id: int | None = None,
) -> Message | None:
    """Store an incoming user message and mark its update processed, in one transaction.

    Returns None, storing nothing, when the update was already processed (Telegram redelivered it). `update_key`
    is the update's identity (bot.db.tables.ProcessedUpdate); an int is taken as its text.
    """
    turn = await _record_update(session, update_key, chat_id, user_id, text, telegram_message_id,
                                reply_to_telegram_message_id, with_reply=False)
    return None if turn is None else turn[0]


async def record_update_and_turn(
    session: AsyncSession,
    update_key: str | int,
    chat_id: int,
    user_id: int | None,
    text: str,
    telegram_message_id: int | None,
    reply_to_telegram_message_id: int | None = None,
    lease: Lease | None = None,
) -> tuple[Message, Message] | None:
    """Store an incoming user message, the empty "streaming" row of the reply to it (held under `lease`), and mark
    its update processed, all in one transaction: an update never counts as handled without a reply row that a
    restart can find (and answer or mark interrupted). (question, reply), or None when the update was already
    processed."""
    return await _record_update(session, update_key, chat_id, user_id, text, telegram_message_id,
                                reply_to_telegram_message_id, with_reply=True, lease=lease)


async def claim_update(session: AsyncSession, update_key: str | int, update_id: int | None = None,
                       chat_id: int | None = None, *, commit: bool = True) -> bool:
    """Mark an update processed: True when this call did, False when it was processed before (by this process or
    another replica: the primary key decides, whoever inserts first)."""
    stmt = upsert(session, ProcessedUpdate).values(key=str(update_key), update_id=update_id, chat_id=chat_id)
    claimed = await session.scalar(
        stmt.on_conflict_do_nothing(index_elements=[ProcessedUpdate.key]).returning(ProcessedUpdate.key)
    )
    if commit or claimed is None:
        await session.commit()  # nothing was written when refused; commit (not rollback) keeps loaded objects usable
    return claimed is not None


async def _record_update(session: AsyncSession, update_key: str | int, chat_id: int, user_id: int | None, text: str,
                         telegram_message_id: int | None, reply_to_telegram_message_id: int | None,
                         with_reply: bool, lease: Lease | None = None) -> tuple[Message, Message | None] | None:
    if not await claim_update(session, update_key, chat_id=chat_id, commit=False):
        return None
    try:
        conversation = await conversation_for_update(session, chat_id)
        message = Message(
            conversation_id=conversation.id,
            chat_id=chat_id,
            user_id=user_id,
            role="user",
            text=text,
            telegram_message_id=telegram_message_id,
            reply_to_telegram_message_id=reply_to_telegram_message_id,
            status="complete",
        )
        session.add(message)
        reply = None
        if with_reply:
            await session.flush()  # the question's id first: replies are found after their question, by id
            reply = Message(conversation_id=conversation.id, chat_id=chat_id, role="assistant", text="",
                            status="streaming", reply_to_telegram_message_id=telegram_message_id,
                            **(lease.values() if lease else {}))
            session.add(reply)
        await session.commit()
    except BaseException:
        await session.rollback()  # the update stays unprocessed, so a redelivery is handled again
        raise
    return message, reply


async def add_assistant_message(
    session: AsyncSession,
    conversation_id: int,
    chat_id: int,
    text: str = "",
    status: MessageStatus = "streaming",
    telegram_message_id: int | None = None,
    reply_to_telegram_message_id: int | None = None,
    model_version_id: int | None = None,
    token_count: int | None = None,
) -> Message:
    """Store the bot's reply (usually empty and "streaming" before generation starts); commits."""
    check_choice(status, MessageStatus, "message status")
    message = Message(
        conversation_id=conversation_id,
        chat_id=chat_id,
        role="assistant",
        text=text,
        status=status,
        telegram_message_id=telegram_message_id,
        reply_to_telegram_message_id=reply_to_telegram_message_id,
        model_version_id=model_version_id,
        token_count=token_count,
    )
    session.add(message)
    await session.commit()
    return message


async def update_message(
    session: AsyncSession,
    message_id: int,
    *,
    text: str | None = None,
    status: MessageStatus | None = None,
    token_count: int | None = None,
    telegram_message_id: int | None = None,
    model_version_id: int | None = None,
) -> None:
    """Set the given fields of a message (text as it streams, final status, ...); commits."""
    values: dict[str, Any] = {}
    if text is not None:
        values["text"] = text
    if status is not None:
        check_choice(status, MessageStatus, "message status")
        values["status"] = status
    if token_count is not None:
        values["token_count"] = token_count
    if telegram_message_id is not None:
        values["telegram_message_id"] = telegram_message_id
    if model_version_id is not None:
        values["model_version_id"] = model_version_id
    if not values:
        return  # updated_at is set by the column's onupdate
    result = await session.execute(update(Message).where(Message.id == message_id).values(**values))
    if result.rowcount == 0:
        await session.rollback()
        raise ValueError(f"unknown message {message_id}")
    await session.commit()


async def get_message(session: AsyncSession, message_id: int) -> Message | None:
    """One message by id."""
    return await session.get(Message, message_id)


async def message_by_telegram_id(session: AsyncSession, chat_id: int, telegram_message_id: int) -> Message | None:
    """The stored message behind a Telegram message (e.g. the bot reply a feedback button sits under)."""
    return await session.scalar(
        select(Message)
        .where(Message.chat_id == chat_id, Message.telegram_message_id == telegram_message_id)
        .order_by(Message.id.desc())
        .limit(1)
    )


async def history(session: AsyncSession, conversation_id: int, limit: int = 50,
                  up_to: int | None = None) -> list[Message]:
    """The last `limit` complete or interrupted messages of a conversation not forgotten, oldest first; with
    `up_to`, none stored after the message of that id."""
    stmt = select(Message).where(Message.conversation_id == conversation_id,
                                 Message.status.in_(("complete", "interrupted")), Message.forgotten_at.is_(None))
    if up_to is not None:
        stmt = stmt.where(Message.id <= up_to)
    newest = await session.scalars(stmt.order_by(Message.id.desc()).limit(limit))
    return list(reversed(newest.all()))


async def has_forgotten(session: AsyncSession, chat_id: int) -> bool:
    """Whether any message of the chat drew on a document that was forgotten since."""
    found = await session.scalar(
        select(Message.id).where(Message.chat_id == chat_id, Message.forgotten_at.is_not(None)).limit(1))
    return found is not None


async def interrupted_messages(session: AsyncSession, lease: Lease | None = None,
                               now: datetime | None = None) -> list[Message]:
    """Messages still "streaming" whose lease expired before `now` (all, when `now` is None: a single process):
    replies cut off by a crash or restart, now held by `lease`, to be delivered or marked interrupted."""
    return await take_abandoned(session, Message, lease or Lease("", datetime.now(UTC)), now)


# ---- feedback -----------------------------------------------------------------------------------


async def set_feedback(session: AsyncSession, message_id: int, user_id: int, value: int) -> None:
    """Record a user's +1/-1 on a message, replacing their earlier vote; commits."""
    if value not in (1, -1):
        raise ValueError(f"feedback must be +1 or -1, not {value!r}")
    stmt = upsert(session, Feedback).values(message_id=message_id, user_id=user_id, value=value)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Feedback.message_id, Feedback.user_id], set_={"value": value, "created_at": func.now()}
        )
    )
    await session.commit()
