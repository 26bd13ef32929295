"""The bot's queries against real SQLite and PostgreSQL databases, migrated to head."""

from __future__ import annotations

import asyncio
import enum
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.db import chat_queries, document_queries, message_queries
from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from bot.db.sources import forget_document
from bot.db.tables import Chat, Chunk, Document, Feedback, Message, ModelVersion, ProcessedUpdate, User

CHAT = -1001234567890123  # supergroup ids do not fit in 32 bits
USER = 5_000_000_001


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def Session(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:  # noqa: N802 (a class-like factory)
    return session_factory(engine)


@pytest.fixture
async def s(Session: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:  # noqa: N803
    async with Session() as session:
        await chat_queries.ensure_user_and_chat(session, CHAT, "supergroup", USER, "ann", "Ann", title="team")
        yield session


async def count(session: AsyncSession, model: type, *where: object) -> int:
    return await session.scalar(select(func.count()).select_from(model).where(*where))


async def test_update_is_recorded_exactly_once(s: AsyncSession) -> None:
    first = await message_queries.record_update_and_user_message(s, "message:1:7", CHAT, USER, "hello", telegram_message_id=7)
    assert first is not None and first.text == "hello" and first.role == "user"
    # server-side default timestamps come back timezone-aware, in UTC, on both backends
    assert first.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - first.created_at) < timedelta(minutes=5)
    again = await message_queries.record_update_and_user_message(s, "message:1:7", CHAT, USER, "hello (redelivered)", telegram_message_id=7)
    assert again is None
    assert await count(s, Message) == 1
    assert await count(s, ProcessedUpdate) == 1
    assert first.text == "hello"  # objects loaded before the duplicate stay usable


async def test_concurrent_deliveries_store_one_message(Session: async_sessionmaker[AsyncSession]) -> None:  # noqa: N803
    async with Session() as setup:
        await chat_queries.ensure_user_and_chat(setup, CHAT, "private", USER)

    async def deliver(text_: str) -> Message | None:
        async with Session() as session:
            return await message_queries.record_update_and_user_message(session, 99, CHAT, USER, text_, telegram_message_id=1)

    results = await asyncio.gather(*(deliver(f"copy {i}") for i in range(4)))
    assert sum(r is not None for r in results) == 1
    async with Session() as check:
        assert await count(check, Message) == 1


async def test_failed_store_leaves_update_unprocessed(s: AsyncSession) -> None:
    # The processed mark and the message share one transaction: if storing fails, a redelivery is handled.
    with pytest.raises(ValueError, match="unknown chat"):
        await message_queries.record_update_and_user_message(s, 5, 777, USER, "hi", telegram_message_id=1)
    assert await count(s, ProcessedUpdate) == 0
    await chat_queries.ensure_user_and_chat(s, 777, "private", USER)
    assert await message_queries.record_update_and_user_message(s, 5, 777, USER, "hi", telegram_message_id=1) is not None


async def test_reset_starts_a_new_conversation_and_keeps_history(s: AsyncSession) -> None:
    m1 = await message_queries.record_update_and_user_message(s, 1, CHAT, USER, "one", telegram_message_id=1)
    reply = await message_queries.add_assistant_message(s, m1.conversation_id, CHAT)
    await message_queries.update_message(s, reply.id, text="two", status="complete", token_count=3)
    old = await chat_queries.current_conversation(s, CHAT)
    assert old.id == m1.conversation_id

    new = await chat_queries.start_new_conversation(s, CHAT)
    m3 = await message_queries.record_update_and_user_message(s, 2, CHAT, USER, "three", telegram_message_id=3)
    assert new.id != old.id and m3.conversation_id == new.id
    assert (await chat_queries.current_conversation(s, CHAT)).id == new.id
    assert [m.text for m in await message_queries.history(s, old.id)] == ["one", "two"]
    assert [m.text for m in await message_queries.history(s, new.id)] == ["three"]
    await s.refresh(old)
    assert old.ended_at is not None and old.ended_at.tzinfo is not None and old.ended_at.utcoffset().total_seconds() == 0


async def test_history_is_the_newest_finished_messages_oldest_first(s: AsyncSession) -> None:
    conv = await chat_queries.current_conversation(s, CHAT)
    for i in range(5):
        await message_queries.record_update_and_user_message(s, 100 + i, CHAT, USER, f"m{i}", telegram_message_id=i)
    streaming = await message_queries.add_assistant_message(s, conv.id, CHAT, text="partial")
    assert [m.text for m in await message_queries.history(s, conv.id, limit=3)] == ["m2", "m3", "m4"]
    # A restart finds the reply still streaming; marking it interrupted brings it into the history.
    assert [m.id for m in await message_queries.interrupted_messages(s)] == [streaming.id]
    await message_queries.update_message(s, streaming.id, status="interrupted")
    assert await message_queries.interrupted_messages(s) == []
    assert [m.text for m in await message_queries.history(s, conv.id, limit=2)] == ["m4", "partial"]
    with pytest.raises(ValueError, match="message status"):
        await message_queries.update_message(s, streaming.id, status="done")  # type: ignore[arg-type]


async def test_chat_settings_override_and_reset(s: AsyncSession) -> None:
    assert await chat_queries.get_chat_settings(s, CHAT) is None
    await chat_queries.set_chat_settings(s, CHAT, system_prompt="Be brief.", temperature=0.2)
    await chat_queries.set_chat_settings(s, CHAT, allow_training=False)  # leaves the others as they are
    settings = await chat_queries.get_chat_settings(s, CHAT)
    assert (settings.system_prompt, settings.temperature, settings.allow_training) == ("Be brief.", 0.2, False)
    await chat_queries.set_chat_settings(s, CHAT, temperature=None)
    with pytest.raises(ValueError, match="temperature"):
        await chat_queries.set_chat_settings(s, CHAT, temperature=9.0)
    await s.refresh(settings)
    assert (settings.system_prompt, settings.temperature) == ("Be brief.", None)


async def test_users_and_chats_are_created_then_refreshed(s: AsyncSession) -> None:
    class Kind(enum.StrEnum):  # what python-telegram-bot hands over as chat.type
        GROUP = "group"

    await chat_queries.ensure_user_and_chat(s, CHAT, Kind.GROUP, USER, "ann2", "Ann", title="renamed")
    chat = await s.get(Chat, CHAT, populate_existing=True)
    assert (chat.type, chat.title) == ("group", "renamed")
    assert (await chat_queries.get_user(s, USER)).username == "ann2"
    with pytest.raises(ValueError, match="chat type"):
        await chat_queries.ensure_user_and_chat(s, 1, "forum")  # type: ignore[arg-type]
    assert await s.get(Chat, 1) is None
    await chat_queries.set_user_blocked(s, USER, True)
    assert (await s.get(User, USER, populate_existing=True)).is_blocked
    with pytest.raises(ValueError, match="unknown user"):
        await chat_queries.set_user_blocked(s, 1, True)


def chunks(n: int) -> list[document_queries.NewChunk]:
    return [document_queries.NewChunk(text=f"t{i}", token_count=2, page=i + 1, embedding=bytes(8)) for i in range(n)]


async def test_deleting_a_document_deletes_its_chunks(s: AsyncSession) -> None:
    scope = f"chat:{CHAT}"
    a = await document_queries.add_document_with_chunks(
        s, scope=scope, chat_id=CHAT, name="a.pdf", mime="application/pdf", sha256="a" * 64, size_bytes=10,
        chunks=chunks(3),
    )
    b = await document_queries.add_document_with_chunks(
        s, scope=scope, chat_id=CHAT, name="b.txt", mime="text/plain", sha256="b" * 64, size_bytes=5, chunks=chunks(2)
    )
    assert [d.name for d in await document_queries.list_documents(s, scope)] == ["a.pdf", "b.txt"]
    assert [(c.document.name, c.ordinal) for c in await document_queries.chunks_for_scope(s, scope)][:2] == [("a.pdf", 0), ("a.pdf", 1)]

    deleted = await forget_document(s, scope, "a.pdf")
    assert deleted is not None and deleted.document.id == a.id
    assert await count(s, Chunk, Chunk.document_id == a.id) == 0  # ON DELETE CASCADE in the database
    assert [c.document_id for c in await document_queries.chunks_for_scope(s, scope)] == [b.id, b.id]
    assert await forget_document(s, scope, "a.pdf") is None
    assert await forget_document(s, "other-scope", "1") is None  # numbers count inside the scope
    assert await forget_document(s, scope, "2") is None  # b.txt is number 1 now that a.pdf is gone
    assert (await forget_document(s, scope, "1")).document.name == "b.txt"
    assert await count(s, Chunk) == 0


async def test_same_file_once_per_scope(s: AsyncSession) -> None:
    args = dict(name="x.md", mime="text/markdown", sha256="c" * 64, size_bytes=3, chunks=chunks(1))
    first = await document_queries.add_document_with_chunks(s, scope="covid", **args)
    with pytest.raises(document_queries.DuplicateDocumentError, match="x.md") as err:
        await document_queries.add_document_with_chunks(s, scope="covid", **{**args, "name": "copy.md"})
    assert err.value.existing.id == first.id
    assert await count(s, Document) == 1 and await count(s, Chunk) == 1
    await document_queries.add_document_with_chunks(s, scope="other", **args)  # another scope may hold the same file
    assert (await document_queries.find_document_by_sha(s, "covid", "c" * 64)).id == first.id

    s.add(Document(scope="other", name="raw", mime="text/plain", sha256="c" * 64, size_bytes=1))
    with pytest.raises(IntegrityError):  # the constraint itself, not just the query's check
        await s.commit()
    await s.rollback()


async def test_one_active_model_version(s: AsyncSession) -> None:
    v1 = await training_db.add_version(s, name="v1", base="smollm2-135m", path="/m/v1", data_size=1000, heldout_loss=2.5)
    v2 = await training_db.add_version(s, name="v2", base=str(v1.id), path="/m/v2")
    assert await training_db.active_version(s) is None
    assert (await training_db.set_active(s, v1.id)).is_active
    await training_db.set_active(s, v2.id)
    assert (await training_db.active_version(s)).id == v2.id
    assert await count(s, ModelVersion, ModelVersion.is_active.is_(True)) == 1
    with pytest.raises(ValueError, match="unknown model version"):
        await training_db.set_active(s, 12345)
    assert (await training_db.active_version(s)).id == v2.id
    with pytest.raises(ValueError, match="already exists"):
        await training_db.add_version(s, name="v1", base="x", path="/x")

    # The database refuses a second active row even from code that skips set_active.
    with pytest.raises(IntegrityError):
        await s.execute(update(ModelVersion).where(ModelVersion.id == v1.id).values(is_active=True))
    await s.rollback()
    assert [v.name for v in await training_db.list_versions(s)] == ["v1", "v2"]
    assert (await training_db.get_version(s, "v2")).id == v2.id


async def test_feedback_is_one_vote_per_user_and_message(s: AsyncSession) -> None:
    conv = await chat_queries.current_conversation(s, CHAT)
    reply = await message_queries.add_assistant_message(s, conv.id, CHAT, text="answer", status="complete", telegram_message_id=8)
    assert (await message_queries.message_by_telegram_id(s, CHAT, 8)).id == reply.id
    await message_queries.set_feedback(s, reply.id, USER, 1)
    await message_queries.set_feedback(s, reply.id, USER, -1)
    assert (await s.execute(select(Feedback.user_id, Feedback.value))).all() == [(USER, -1)]
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        await message_queries.set_feedback(s, reply.id, USER, 5)


async def test_training_run_lifecycle(s: AsyncSession) -> None:
    run = await training_db.create_run(s, mode="lora", config={"steps": 10, "lr": 2e-4}, requested_by=USER)
    assert run.status == "pending" and [r.id for r in await training_db.unfinished_runs(s)] == [run.id]
    started = datetime.now(UTC)
    await training_db.update_run(s, run.id, status="running", pid=4242, started_at=started, log_path="/runs/1/log.txt")
    version = await training_db.add_version(s, name="lora-1", base="smollm2-135m", path="/runs/1/final")
    await training_db.update_run(s, run.id, status="succeeded", result_version_id=version.id, heldout_loss_after=1.9)
    assert await training_db.unfinished_runs(s) == []
    s.expunge_all()
    loaded = await training_db.get_run(s, run.id)
    assert loaded.config == {"steps": 10, "lr": 2e-4} and loaded.result_version_id == version.id
    assert abs((loaded.started_at - started).total_seconds()) < 1e-3 and loaded.started_at.tzinfo is not None
    with pytest.raises(ValueError, match="run status"):
        await training_db.update_run(s, run.id, status="exploded")
    with pytest.raises(ValueError, match="not a training run field"):
        await training_db.update_run(s, run.id, mode="full")
    with pytest.raises(ValueError, match="training mode"):
        await training_db.create_run(s, mode="magic", config={})  # type: ignore[arg-type]
    assert [r.id for r in await training_db.list_runs(s)] == [run.id]


async def test_sqlite_file_is_created_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "docent.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() > 0
    finally:
        await engine.dispose()
    assert path.exists()


def test_bot_db_imports_neither_torch_nor_telegram() -> None:
    code = "import sys, bot.db, bot.db.chat_queries, bot.db.message_queries, bot.db.document_queries, bot.db.training; print(sorted({'torch', 'telegram'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_documents_are_found_by_their_number_in_the_chats_own_list_or_by_name(s: AsyncSession) -> None:
    from bot.db.sources import AmbiguousName, find_document

    def add(scope: str, name: str, sha: str):
        return document_queries.add_document_with_chunks(s, scope=scope, chat_id=CHAT, name=name, mime="text/plain",
                                                         sha256=sha * 64, size_bytes=1, chunks=chunks(1))

    await add("chat:other", "theirs.txt", "1")  # another chat's documents take ids, not numbers, from this one
    await add("chat:mine", "notes.txt", "2")
    await add("chat:mine", "plan.txt", "3")
    await add("chat:mine", "notes.txt", "4")
    assert (await find_document(s, "chat:mine", "1")).sha256 == "2" * 64
    assert (await find_document(s, "chat:mine", "2")).name == "plan.txt"
    assert await find_document(s, "chat:mine", "4") is None and await find_document(s, "chat:mine", "0") is None
    assert (await find_document(s, "chat:other", "1")).name == "theirs.txt"
    with pytest.raises(AmbiguousName) as ambiguous:
        await find_document(s, "chat:mine", "notes.txt")
    assert ambiguous.value.numbers == [1, 3]
