"""Model versions (the promoted fine-tunes, one active at a time), training runs, and the read-only queries
that gather training data: which chats opted in, their conversations with the net feedback of every reply, and
their documents' chunks. Conventions as in `chat_queries.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.lease_queries import Lease
from bot.db.session import check_choice
from bot.db.tables import (
    Chat,
    ChatSettings,
    Chunk,
    Document,
    Feedback,
    Message,
    ModelVersion,
    RunMode,
    RunStatus,
    TrainingRun,
)

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
    "owner",
    "lease_until",
}


async def create_run(
    session: AsyncSession,
    *,
    mode: RunMode,
    config: dict[str, Any],
    requested_by: int | None = None,
    base_version_id: int | None = None,
    lease: Lease | None = None,
) -> TrainingRun:
    """Queue a training run (status "pending"), held by `lease` when given (bot.db.lease_queries); commits."""
    check_choice(mode, RunMode, "training mode")
    run = TrainingRun(mode=mode, config=config, requested_by=requested_by, base_version_id=base_version_id,
                      **(lease.values() if lease else {}))
    session.add(run)
    await session.commit()
    return run


async def update_run(session: AsyncSession, run_id: int, **fields: Any) -> TrainingRun:
    """Set fields of a run (status, started_at, pid, paths, losses, error, ...); commits."""
    unknown = set(fields) - _RUN_FIELDS
    if unknown:
        raise ValueError(f"not a training run field: {', '.join(sorted(unknown))}")
    if "status" in fields:
        check_choice(fields["status"], RunStatus, "run status")
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


async def live_run(session: AsyncSession, now: datetime, owner: str) -> TrainingRun | None:
    """A run pending or running on another replica whose lease has not expired: that replica trains now."""
    return await session.scalar(select(TrainingRun).where(
        TrainingRun.status.in_(("pending", "running")), TrainingRun.owner != owner, TrainingRun.lease_until >= now)
        .order_by(TrainingRun.id).limit(1))


async def unfinished_runs(session: AsyncSession) -> list[TrainingRun]:
    """Runs pending, running or resumable: what a restarted bot must look after, oldest first."""
    rows = await session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status.in_(("pending", "running", "resumable")))
        .order_by(TrainingRun.id)
    )
    return list(rows)


# ---- training data -------------------------------------------------------------------------------


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
