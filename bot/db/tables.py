"""SQLAlchemy 2.0 models: everything the bot must remember across a restart.

One schema for SQLite and PostgreSQL. Constraint names come from a naming convention so that Alembic
migrations can name (and drop) them the same way on both backends. Enumerations are short strings with
a CHECK constraint rather than native enums: they migrate trivially and read the same everywhere.
Timestamps are timezone-aware UTC on both backends (SQLite stores naive UTC text; `UTCDateTime` adds
the zone back on load).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from bot.safe_text import storable

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ChatType = Literal["private", "group", "supergroup", "channel"]
Role = Literal["user", "assistant", "system"]
MessageStatus = Literal["complete", "streaming", "interrupted", "failed"]
DocumentStatus = Literal["indexing", "ready", "failed"]
RunStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "resumable"]
RunMode = Literal["lora", "full", "scratch"]
JobKind = Literal["ingest", "summary"]

# Surrogate keys of the big tables: BIGINT on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY
# is SQLite's auto-incrementing rowid alias).
BigID = BigInteger().with_variant(Integer(), "sqlite")


def one_of(column: str, values: tuple[Any, ...], name: str) -> CheckConstraint:
    """CHECK (column IN (...)) named through the convention, e.g. ck_messages_status."""
    listed = ", ".join(repr(v) for v in values)  # repr gives 'quoted' strings and bare ints
    return CheckConstraint(f"{column} IN ({listed})", name=name)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always comes back in UTC, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        # SQLite keeps text without a zone; store UTC so it sorts with CURRENT_TIMESTAMP defaults.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StorableText(TypeDecorator[str]):
    """Text as every backend stores it: U+0000 (which PostgreSQL refuses in any text column) and lone surrogates
    (which no UTF-8 encoder takes) become U+FFFD on the way in (bot.safe_text.storable). Updates are cleaned where
    they enter (bot.telegram.incoming); this covers everything else that reaches SQL: a model's output, a
    document's text, a summary, an error. VARCHAR(length), or TEXT without one."""

    impl = Text
    cache_ok = True

    def __init__(self, length: int | None = None):
        super().__init__()
        self.impl = String(length) if length is not None else Text()

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable(value) if isinstance(value, str) else value


def created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), server_default=func.now(), nullable=False)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Telegram user id
    username: Mapped[str | None] = mapped_column(StorableText(64))
    first_name: Mapped[str | None] = mapped_column(StorableText(255))
    created_at: Mapped[datetime] = created_at()
    is_blocked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (one_of("type", get_args(ChatType), "type"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Telegram chat id
    type: Mapped[str] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(StorableText(255))
    created_at: Mapped[datetime] = created_at()
    # chats <-> conversations is a cycle; use_alter lets create_all/drop_all order the DDL.
    current_conversation_id: Mapped[int | None] = mapped_column(
        ForeignKey("conversations.id", use_alter=True, ondelete="SET NULL")
    )


class ChatSettings(Base):
    """Per-chat overrides; NULL means "use the config default"."""

    __tablename__ = "chat_settings"

    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), primary_key=True)
    system_prompt: Mapped[str | None] = mapped_column(StorableText())
    temperature: Mapped[float | None] = mapped_column(Float)
    allow_training: Mapped[bool | None] = mapped_column(Boolean)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = created_at()
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        one_of("role", get_args(Role), "role"),
        one_of("status", get_args(MessageStatus), "status"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # a chat's messages (/stats) and the one behind a Telegram message (feedback, a reply's question)
        Index("ix_messages_chat_id_telegram_message_id", "chat_id", "telegram_message_id"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(StorableText(), default="", server_default="")
    token_count: Mapped[int | None] = mapped_column(Integer)
    telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    reply_to_telegram_message_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="complete", server_default="complete")
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    # Set when a document this turn drew on was forgotten: the row stays (the chat's record), but it is never
    # again sent to the model nor exported for training (bot.db.sources).
    forgotten_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # the replica whose work this row is (a reply being written), and until when its lease holds (renewed by its
    # heartbeat; bot.db.lease_queries)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ProcessedUpdate(Base):
    """Telegram updates already handled, keyed on what the update is (bot.telegram.incoming.update_key: its chat,
    message and kind, or a hash of its content), never on the Bot API's update id alone: that numbering restarts
    (a new token) and is shared by every chat, so it cannot tell two updates apart. A text message's key is written
    in the same transaction as the message; other updates claim theirs before any handler runs."""

    __tablename__ = "processed_updates"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    update_id: Mapped[int | None] = mapped_column(BigInteger)  # as Telegram numbered it, for the logs
    chat_id: Mapped[int | None] = mapped_column(BigInteger)
    processed_at: Mapped[datetime] = created_at()


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("scope", "sha256"),
        one_of("status", get_args(DocumentStatus), "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # scope is the retrieval namespace: "chat:<id>" for a chat's uploads, any label from the CLI.
    scope: Mapped[str] = mapped_column(StorableText(255), index=True)
    chat_id: Mapped[int | None] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    # who sent the file (None: the CLI, or stored before uploads were recorded per person); may /forget it
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(StorableText(255))
    mime: Mapped[str] = mapped_column(StorableText(127))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="indexing", server_default="indexing")
    created_at: Mapped[datetime] = created_at()
    # the replica whose work this row is (a document being indexed), and until when its lease holds (renewed by its
    # heartbeat; bot.db.lease_queries)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())

    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True, order_by="Chunk.ordinal"
    )


class ScopeVersion(Base):
    """How many times a scope's set of ready documents changed (an upload finished, a document forgotten), bumped
    in the transaction that changed it. A replica's index files and the index in its memory are a cache of SQL
    tagged with the version they were built at: one row read tells a replica that another changed the scope."""

    __tablename__ = "scope_versions"

    scope: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(StorableText())
    page: Mapped[int | None] = mapped_column(Integer)
    heading: Mapped[str | None] = mapped_column(StorableText())
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 vector, np.float32 .tobytes()
    # float16 (windows, dim): one embedding per run of consecutive sentences, for sentence-level dense scores
    window_embeddings: Mapped[bytes | None] = mapped_column(LargeBinary)

    document: Mapped[Document] = relationship(back_populates="chunks")


class MessageSource(Base):
    """A turn drew on a document: an answer grounded on it, the question that answer replied to, or a reply
    whose prompt held such a turn. Forgetting the document marks these messages (Message.forgotten_at)."""

    __tablename__ = "message_sources"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Job(Base):
    """A long job in progress (an upload being indexed, a summary being written) and the Telegram message that
    shows its progress. The row is deleted when the job has told its user how it ended; a row whose lease expired
    belongs to a job a crash or restart cut off (bot.services.long_jobs)."""

    __tablename__ = "jobs"
    __table_args__ = (one_of("kind", get_args(JobKind), "kind"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(StorableText())  # what the job is about, as its user named it: a file name
    created_at: Mapped[datetime] = created_at()
    # the replica whose work this row is, and until when its lease holds (renewed by its
    # heartbeat; bot.db.lease_queries)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("message_id", "user_id"),
        one_of("value", (-1, 1), "value"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = created_at()


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one active version, enforced by the database: a unique index over active rows only.
        Index(
            "uq_model_versions_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    base: Mapped[str] = mapped_column(String(255))  # a hub name, or the parent version's id as text
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at()
    data_size: Mapped[int | None] = mapped_column(BigInteger)  # training tokens
    heldout_loss: Mapped[float | None] = mapped_column(Float)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    notes: Mapped[str | None] = mapped_column(StorableText())


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        one_of("status", get_args(RunStatus), "status"),
        one_of("mode", get_args(RunMode), "mode"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    mode: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = created_at()
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pid: Mapped[int | None] = mapped_column(Integer)
    log_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    base_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    heldout_loss_before: Mapped[float | None] = mapped_column(Float)
    heldout_loss_after: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(StorableText())
    owner: Mapped[str | None] = mapped_column(String(64))  # the replica running it (bot.db.lease_queries)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
