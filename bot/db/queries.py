"""The async queries the bot's services call, one short function each.

Every function takes an AsyncSession from `session_factory` (objects stay readable after commit).
Functions that write commit before they return, so each one is a complete unit of work; functions
that only read never commit. Bad input raises ValueError with a message fit to show a person, and
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from bot.db.models import (
    Chat,
    ChatSettings,
    ChatType,
    Chunk,
    Conversation,
    Document,
    DocumentStatus,
    Feedback,
    Message,
    MessageStatus,
    ModelVersion,
    ProcessedUpdate,
    RunMode,
    RunStatus,
    TrainingRun,
    User,
)


def _now() -> datetime:
    return datetime.now(UTC)


def _check(value: Any, allowed: Any, what: str) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ValueError(f"{what} must be one of {', '.join(map(str, options))}, not {value!r}")


def _insert(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's backend (both spell it the same way)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


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
    _check(chat_type, ChatType, "chat type")
    kind = str(chat_type)  # a str enum (telegram's ChatType) becomes its plain value
    if user_id is not None:
        stmt = _insert(session, User).values(id=user_id, username=username, first_name=first_name)
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=[User.id], set_={"username": username, "first_name": first_name}
            )
        )
    stmt = _insert(session, Chat).values(id=chat_id, type=kind, title=title)
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
            .values(ended_at=_now())
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


async def _current(session: AsyncSession, chat_id: int) -> Conversation:
    chat = await _locked_chat(session, chat_id)
    if chat.current_conversation_id is not None:
        conversation = await session.get(Conversation, chat.current_conversation_id)
        if conversation is not None:
            return conversation
    return await _new_conversation(session, chat)


async def current_conversation(session: AsyncSession, chat_id: int) -> Conversation:
    """The chat's open conversation, started (and committed) if it has none."""
    conversation = await _current(session, chat_id)
    await session.commit()
    return conversation


async def start_new_conversation(session: AsyncSession, chat_id: int) -> Conversation:
    """End the chat's current conversation and start a fresh one (/reset); history stays; commits."""
    conversation = await _new_conversation(session, await _locked_chat(session, chat_id))
    await session.commit()
    return conversation


# ---- messages -----------------------------------------------------------------------------------


async def record_update_and_user_message(
    session: AsyncSession,
    update_id: int,
    chat_id: int,
    user_id: int | None,
    text: str,
    telegram_message_id: int | None,
    reply_to_telegram_message_id: int | None = None,
) -> Message | None:
    """Store an incoming user message and mark its update processed, in one transaction.

    Returns None, storing nothing, when the update was already processed (Telegram redelivered it).
    """
    stmt = _insert(session, ProcessedUpdate).values(update_id=update_id, chat_id=chat_id)
    claimed = await session.scalar(
        stmt.on_conflict_do_nothing(index_elements=[ProcessedUpdate.update_id]).returning(
            ProcessedUpdate.update_id
        )
    )
    if claimed is None:
        await session.commit()  # nothing was written; commit (not rollback) keeps loaded objects usable
        return None
    try:
        conversation = await _current(session, chat_id)
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
        await session.commit()
    except BaseException:
        await session.rollback()  # the update stays unprocessed, so a redelivery is handled again
        raise
    return message


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
    _check(status, MessageStatus, "message status")
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
        _check(status, MessageStatus, "message status")
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


async def history(session: AsyncSession, conversation_id: int, limit: int = 50) -> list[Message]:
    """The last `limit` complete or interrupted messages of a conversation not forgotten, oldest first."""
    newest = await session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.status.in_(("complete", "interrupted")),
               Message.forgotten_at.is_(None))
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return list(reversed(newest.all()))


async def interrupted_messages(session: AsyncSession) -> list[Message]:
    """Messages still "streaming": replies cut off by a crash or restart, to be marked interrupted."""
    rows = await session.scalars(select(Message).where(Message.status == "streaming").order_by(Message.id))
    return list(rows)


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


# ---- documents and chunks -----------------------------------------------------------------------


@dataclass
class NewChunk:
    """A chunk to store: its text, where it came from, and its float32 embedding as bytes."""

    text: str
    token_count: int
    page: int | None = None
    heading: str | None = None
    embedding: bytes | None = None
    window_embeddings: bytes | None = None  # float16 (windows, dim), see Chunk.window_embeddings


class DuplicateDocumentError(ValueError):
    """The same file (by sha256) is already in this scope."""

    def __init__(self, existing: Document):
        super().__init__(f"this file is already here as {existing.name!r} (id {existing.id})")
        self.existing = existing


async def find_document_by_sha(session: AsyncSession, scope: str, sha256: str) -> Document | None:
    """The document in `scope` with this content hash, if any."""
    return await session.scalar(select(Document).where(Document.scope == scope, Document.sha256 == sha256))


async def add_document_with_chunks(
    session: AsyncSession,
    *,
    scope: str,
    name: str,
    mime: str,
    sha256: str,
    size_bytes: int,
    chunks: Sequence[NewChunk],
    chat_id: int | None = None,
    user_id: int | None = None,
    pages: int | None = None,
    status: DocumentStatus = "ready",
) -> Document:
    """Store a document and all its chunks in one transaction; commits.

    Raises DuplicateDocumentError when the scope already holds a file with the same sha256.
    """
    _check(status, DocumentStatus, "document status")
    document = Document(
        scope=scope,
        chat_id=chat_id,
        user_id=user_id,
        name=name,
        mime=mime,
        sha256=sha256,
        size_bytes=size_bytes,
        pages=pages,
        chunk_count=len(chunks),
        status=status,
    )
    document.chunks = [
        Chunk(ordinal=i, text=c.text, page=c.page, heading=c.heading, token_count=c.token_count, embedding=c.embedding,
              window_embeddings=c.window_embeddings)
        for i, c in enumerate(chunks)
    ]
    return await commit_new_document(session, document)


async def commit_new_document(session: AsyncSession, document: Document) -> Document:
    """Add a new document row (with whatever chunks it holds) and commit; raises DuplicateDocumentError when its
    scope already has a file with the same sha256."""
    session.add(document)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        existing = await find_document_by_sha(session, document.scope, document.sha256)
        if existing is not None:
            raise DuplicateDocumentError(existing) from None
        raise
    return document


async def set_document_status(session: AsyncSession, document_id: int, status: DocumentStatus) -> None:
    """Mark a document indexing, ready or failed; commits."""
    _check(status, DocumentStatus, "document status")
    await session.execute(update(Document).where(Document.id == document_id).values(status=status))
    await session.commit()


async def list_documents(session: AsyncSession, scope: str) -> list[Document]:
    """The documents of a scope that are ready (not still being indexed), oldest first."""
    rows = await session.scalars(select(Document).where(Document.scope == scope, Document.status == "ready")
                                 .order_by(Document.id))
    return list(rows)


async def chunks_for_scope(session: AsyncSession, scope: str) -> list[Chunk]:
    """Every chunk of the scope's ready documents, with its document, in reading order (index rebuilds)."""
    rows = await session.scalars(
        select(Chunk)
        .join(Chunk.document)
        .where(Document.scope == scope, Document.status == "ready")
        .options(joinedload(Chunk.document))
        .order_by(Chunk.document_id, Chunk.ordinal)
    )
    return list(rows)


async def chunks_by_ids(session: AsyncSession, ids: Sequence[int]) -> list[Chunk]:
    """The chunks with these ids (retrieval hits), with their documents, in the order of `ids`."""
    rows = await session.scalars(select(Chunk).where(Chunk.id.in_(ids)).options(joinedload(Chunk.document)))
    by_id = {c.id: c for c in rows}
    return [by_id[i] for i in ids if i in by_id]


# ---- feedback -----------------------------------------------------------------------------------


async def set_feedback(session: AsyncSession, message_id: int, user_id: int, value: int) -> None:
    """Record a user's +1/-1 on a message, replacing their earlier vote; commits."""
    if value not in (1, -1):
        raise ValueError(f"feedback must be +1 or -1, not {value!r}")
    stmt = _insert(session, Feedback).values(message_id=message_id, user_id=user_id, value=value)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Feedback.message_id, Feedback.user_id], set_={"value": value, "created_at": func.now()}
        )
    )
    await session.commit()


# ---- model versions -----------------------------------------------------------------------------


async def add_version(
    session: AsyncSession,
    *,
    name: str,
    base: str,
    path: str,
    data_size: int | None = None,
    heldout_loss: float | None = None,
    notes: str | None = None,
) -> ModelVersion:
    """Register a model version (inactive); commits. Raises ValueError if the name is taken."""
    if await session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        raise ValueError(f"a model version named {name!r} already exists")
    version = ModelVersion(
        name=name, base=base, path=path, data_size=data_size, heldout_loss=heldout_loss, notes=notes
    )
    session.add(version)
    await session.commit()
    return version


async def get_version(session: AsyncSession, id_or_name: int | str) -> ModelVersion | None:
    """A model version by id or by name (None: no such version, also for an id no table could hold)."""
    if isinstance(id_or_name, int):
        return await session.get(ModelVersion, id_or_name) if 0 < id_or_name < 2**31 else None
    return await session.scalar(select(ModelVersion).where(ModelVersion.name == id_or_name))


async def active_version(session: AsyncSession) -> ModelVersion | None:
    """The version the bot should serve, or None to serve the configured base model."""
    return await session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


async def set_active(session: AsyncSession, version_id: int | None) -> ModelVersion | None:
    """Make one version the only active one (None: none active), in one transaction; commits."""
    if version_id is not None and await session.get(ModelVersion, version_id) is None:
        raise ValueError(f"unknown model version {version_id}")
    # Clear first: the partial unique index would reject a second active row even for a moment.
    await session.execute(
        update(ModelVersion).where(ModelVersion.is_active.is_(True)).values(is_active=False)
    )
    if version_id is not None:
        await session.execute(update(ModelVersion).where(ModelVersion.id == version_id).values(is_active=True))
    await session.commit()
    if version_id is None:
        return None
    return await session.get(ModelVersion, version_id, populate_existing=True)


async def list_versions(session: AsyncSession) -> list[ModelVersion]:
    """All model versions, oldest first."""
    return list(await session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


# ---- training runs ------------------------------------------------------------------------------

_RUN_FIELDS = {
    "status",
    "started_at",
    "finished_at",
    "pid",
    "log_path",
    "checkpoint_path",
    "result_version_id",
    "heldout_loss_before",
    "heldout_loss_after",
    "error",
}


async def create_run(
    session: AsyncSession,
    *,
    mode: RunMode,
    config: dict[str, Any],
    requested_by: int | None = None,
    base_version_id: int | None = None,
) -> TrainingRun:
    """Queue a training run (status "pending"); commits."""
    _check(mode, RunMode, "training mode")
    run = TrainingRun(mode=mode, config=config, requested_by=requested_by, base_version_id=base_version_id)
    session.add(run)
    await session.commit()
    return run


async def update_run(session: AsyncSession, run_id: int, **fields: Any) -> TrainingRun:
    """Set fields of a run (status, started_at, pid, paths, losses, error, ...); commits."""
    unknown = set(fields) - _RUN_FIELDS
    if unknown:
        raise ValueError(f"not a training run field: {', '.join(sorted(unknown))}")
    if "status" in fields:
        _check(fields["status"], RunStatus, "run status")
    run = await session.get(TrainingRun, run_id)
    if run is None:
        raise ValueError(f"unknown training run {run_id}")
    for name, value in fields.items():
        setattr(run, name, value)
    await session.commit()
    return run


async def get_run(session: AsyncSession, run_id: int) -> TrainingRun | None:
    """One training run by id."""
    return await session.get(TrainingRun, run_id)


async def list_runs(session: AsyncSession, limit: int = 20) -> list[TrainingRun]:
    """The most recent training runs, newest first."""
    return list(await session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


async def unfinished_runs(session: AsyncSession) -> list[TrainingRun]:
    """Runs pending, running or resumable: what a restarted bot must look after, oldest first."""
    rows = await session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status.in_(("pending", "running", "resumable")))
        .order_by(TrainingRun.id)
    )
    return list(rows)
