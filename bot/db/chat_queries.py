"""Users, chats and their conversations, and each chat's settings (system prompt, temperature, training
opt-in).

Every function takes an AsyncSession from `session_factory` (objects stay readable after commit). Functions
that write commit before they return, so each one is a complete unit of work; functions that only read never
commit. Bad input raises ValueError with a message fit to show a person, and changes nothing. The other
modules of this package follow the same conventions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.session import check_choice, now_utc, upsert
from bot.db.tables import Chat, ChatSettings, ChatType, Conversation, User

# ---- users, chats, conversations ----------------------------------------------------------------


async def ensure_user_and_chat(
    session: AsyncSession,
    chat_id: int,
    chat_type: ChatType,
    user_id: int | None = None,
    username: str | None = None,
    first_name: str | None = None,
    title: str | None = None,
) -> None:
    """Create or refresh the chat (and the user, when given) an update came from; commits."""
    check_choice(chat_type, ChatType, "chat type")
    kind = str(chat_type)  # a str enum (telegram's ChatType) becomes its plain value
    if user_id is not None:
        stmt = upsert(session, User).values(id=user_id, username=username, first_name=first_name)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[User.id], set_={"username": username, "first_name": first_name}
            )
        )
    stmt = upsert(session, Chat).values(id=chat_id, type=kind, title=title)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[Chat.id], set_={"type": kind, "title": title})
    )
    await session.commit()


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    """The user with this Telegram id, if the bot has seen them."""
    return await session.get(User, user_id)


async def set_user_blocked(session: AsyncSession, user_id: int, blocked: bool) -> None:
    """Block or unblock a user; commits. Raises ValueError for an unknown user."""
    result = await session.execute(update(User).where(User.id == user_id).values(is_blocked=blocked))
    if result.rowcount == 0:
        await session.rollback()
        raise ValueError(f"unknown user {user_id}")
    await session.commit()


async def _new_conversation(session: AsyncSession, chat: Chat) -> Conversation:
    if chat.current_conversation_id is not None:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == chat.current_conversation_id, Conversation.ended_at.is_(None))
            .values(ended_at=now_utc())
        )
    conversation = Conversation(chat_id=chat.id)
    session.add(conversation)
    await session.flush()
    chat.current_conversation_id = conversation.id
    return conversation


async def _locked_chat(session: AsyncSession, chat_id: int) -> Chat:
    # FOR UPDATE serialises two first messages of a chat on PostgreSQL (SQLite allows one writer at a
    # time); populate_existing so a chat loaded earlier in this session is read afresh.
    chat = await session.scalar(
        select(Chat).where(Chat.id == chat_id).with_for_update().execution_options(populate_existing=True)
    )
    if chat is None:
        raise ValueError(f"unknown chat {chat_id}")
    return chat


async def conversation_for_update(session: AsyncSession, chat_id: int) -> Conversation:
    chat = await _locked_chat(session, chat_id)
    if chat.current_conversation_id is not None:
        conversation = await session.get(Conversation, chat.current_conversation_id)
        if conversation is not None:
            return conversation
    return await _new_conversation(session, chat)


async def current_conversation(session: AsyncSession, chat_id: int) -> Conversation:
    """The chat's open conversation, started (and committed) if it has none."""
    conversation = await conversation_for_update(session, chat_id)
    await session.commit()
    return conversation


async def start_new_conversation(session: AsyncSession, chat_id: int) -> Conversation:
    """End the chat's current conversation and start a fresh one (/reset); history stays; commits."""
    conversation = await _new_conversation(session, await _locked_chat(session, chat_id))
    await session.commit()
    return conversation


# ---- chat settings ------------------------------------------------------------------------------


class _Keep:
    """Marker for "leave this setting as it is" (None means "back to the config default")."""


KEEP: Any = _Keep()


async def get_chat_settings(session: AsyncSession, chat_id: int) -> ChatSettings | None:
    """The chat's overrides, or None when it has never set any."""
    return await session.get(ChatSettings, chat_id)


async def set_chat_settings(
    session: AsyncSession,
    chat_id: int,
    *,
    system_prompt: str | None = KEEP,
    temperature: float | None = KEEP,
    allow_training: bool | None = KEEP,
) -> ChatSettings:
    """Change the given overrides of a chat (None resets one to the default); commits."""
    if temperature is not KEEP and temperature is not None and not 0.0 <= temperature <= 2.0:
        raise ValueError(f"temperature must be between 0 and 2, not {temperature}")
    settings = await session.get(ChatSettings, chat_id) or ChatSettings(chat_id=chat_id)
    for name, value in (
        ("system_prompt", system_prompt),
        ("temperature", temperature),
        ("allow_training", allow_training),
    ):
        if value is not KEEP:
            setattr(settings, name, value)
    session.add(settings)
    await session.commit()
    return settings
