"""Migrations run up, down and up again on SQLite and PostgreSQL, and leave exactly the models' schema."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, Text, inspect, text

from bot.db.session import alembic_config, create_engine, downgrade, upgrade
from bot.db.tables import Base

TABLES = {
    "users",
    "chats",
    "chat_settings",
    "conversations",
    "messages",
    "processed_updates",
    "documents",
    "chunks",
    "feedback",
    "message_sources",
    "jobs",
    "scope_versions",
    "model_versions",
    "training_runs",
}


async def schema_diff(url: str, metadata: MetaData = Base.metadata) -> list:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()


async def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names())) - {"alembic_version"}
    finally:
        await engine.dispose()


async def test_up_down_up_matches_models(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # alembic.ini and migrations/ are found from the package, not the cwd
    await upgrade(db_url)
    assert await tables(db_url) == TABLES
    assert await schema_diff(db_url) == []
    await downgrade(db_url, "base")
    assert await tables(db_url) == set()
    await upgrade(db_url)
    assert await schema_diff(db_url) == []


async def test_schema_diff_sees_a_drifted_model(db_url: str) -> None:
    # Guards the test above: the comparison must notice a missing index, foreign key and column.
    await upgrade(db_url)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    messages = drifted.tables["messages"]
    messages.indexes.clear()
    user_fk = next(c for c in messages.foreign_key_constraints if c.referred_table.name == "users")
    messages.constraints.discard(user_fk)
    for fk in user_fk.elements:
        messages.foreign_keys.discard(fk)
        fk.parent.foreign_keys.discard(fk)
    messages.append_column(Column("extra", Text, nullable=True))
    kinds = {d[0] if isinstance(d, tuple) else d[0][0] for d in await schema_diff(db_url, drifted)}
    assert {"remove_index", "remove_fk", "add_column"} <= kinds


async def test_each_step_down_keeps_earlier_data(db_url: str) -> None:
    await upgrade(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO chats (id, type) VALUES (-100123, 'group')"))
            await conn.execute(text("INSERT INTO conversations (id, chat_id) VALUES (1, -100123)"))
            await conn.execute(text("INSERT INTO model_versions (id, name, base, path) VALUES (1, 'v1', 'hub', '/m')"))
            await conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, chat_id, role, text, model_version_id)"
                    " VALUES (1, -100123, 'assistant', 'hello', 1)"
                )
            )
            await conn.execute(text("UPDATE chats SET current_conversation_id = 1"))
            await conn.execute(text("INSERT INTO users (id) VALUES (42)"))
            await conn.execute(text("INSERT INTO documents (id, scope, chat_id, user_id, name, mime, sha256, size_bytes)"
                                    " VALUES (1, 'chat:-100123', -100123, 42, 'a.txt', 'text/plain', 'ab', 2)"))
            await conn.execute(text("UPDATE messages SET forgotten_at = CURRENT_TIMESTAMP"))
            await conn.execute(text("INSERT INTO message_sources (message_id, document_id) SELECT id, 1 FROM messages"))
    finally:
        await engine.dispose()
    # 0006's downgrade rebuilds messages on SQLite to drop forgotten_at: rows, and 0005's uploader, must survive.
    await downgrade(db_url, "0005_stats")
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT text FROM messages"))).all() == [("hello",)]
            assert (await conn.execute(text("SELECT name, user_id FROM documents"))).all() == [("a.txt", 42)]
    finally:
        await engine.dispose()
    assert await tables(db_url) == TABLES - {"message_sources", "jobs", "scope_versions"}
    # 0005's downgrade rebuilds documents on SQLite to drop user_id: rows must survive.
    await downgrade(db_url, "0004_chunk_windows")
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT text FROM messages"))).all() == [("hello",)]
            assert (await conn.execute(text("SELECT name FROM documents"))).all() == [("a.txt",)]
    finally:
        await engine.dispose()
    # 0003's downgrade rebuilds messages on SQLite to drop its foreign key: rows must survive.
    await downgrade(db_url, "0002_documents")
    await downgrade(db_url, "0001_chat")
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT text, model_version_id FROM messages"))).all() == [("hello", 1)]
            assert (await conn.execute(text("SELECT current_conversation_id FROM chats"))).scalar() == 1
    finally:
        await engine.dispose()
    assert await tables(db_url) == TABLES - {"documents", "chunks", "feedback", "message_sources", "jobs",
                                             "scope_versions", "model_versions", "training_runs"}
    await downgrade(db_url, "base")
    assert await tables(db_url) == set()


async def test_documents_keep_their_rows_and_uploader_across_0005(db_url: str) -> None:
    await upgrade(db_url)
    engine = create_engine(db_url)
    insert = ("INSERT INTO documents (id, scope, chat_id, {user}name, mime, sha256, size_bytes) "
              "VALUES ({id}, 'chat:7', 7, {uid}'{name}', 'text/plain', '{sha}', 3)")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO users (id) VALUES (42)"))
            await conn.execute(text("INSERT INTO chats (id, type) VALUES (7, 'private')"))
            await conn.execute(text(insert.format(user="user_id, ", id=1, uid="42, ", name="a.txt", sha="a" * 64)))
    finally:
        await engine.dispose()
    await downgrade(db_url, "0004_chunk_windows")  # SQLite rebuilds documents to drop the column
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT id, name FROM documents"))).all() == [(1, "a.txt")]
            await conn.execute(text(insert.format(user="", id=2, uid="", name="b.txt", sha="b" * 64)))
    finally:
        await engine.dispose()
    await upgrade(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            rows = (await conn.execute(text("SELECT id, user_id FROM documents ORDER BY id"))).all()
            assert rows == [(1, None), (2, None)]  # uploaders from before 0005 are unknown
            await conn.execute(text("UPDATE documents SET user_id = 42 WHERE id = 2"))
            await conn.execute(text("DELETE FROM users WHERE id = 42"))  # a user gone: the document stays
            assert (await conn.execute(text("SELECT id, user_id FROM documents WHERE id = 2"))).all() == [(2, None)]
    finally:
        await engine.dispose()


async def test_0006_keeps_each_documents_uploader_and_leaves_turns_unforgotten(db_url: str) -> None:
    # 0006 (message sources) follows 0005 (stats): the uploader recorded by 0005 is the one /forget checks.
    await upgrade(db_url, "0005_stats")
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO users (id) VALUES (42)"))
            await conn.execute(text("INSERT INTO chats (id, type) VALUES (7, 'private')"))
            await conn.execute(text("INSERT INTO conversations (id, chat_id) VALUES (1, 7)"))
            await conn.execute(text("INSERT INTO messages (conversation_id, chat_id, role, text) "
                                    "VALUES (1, 7, 'user', 'hi')"))
            await conn.execute(text("INSERT INTO documents (id, scope, chat_id, user_id, name, mime, sha256, "
                                    "size_bytes) VALUES (1, 'chat:7', 7, 42, 'a.txt', 'text/plain', 'ab', 2)"))
    finally:
        await engine.dispose()
    await upgrade(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT name, user_id FROM documents"))).all() == [("a.txt", 42)]
            assert (await conn.execute(text("SELECT text, forgotten_at FROM messages"))).all() == [("hi", None)]
            assert (await conn.execute(text("SELECT count(*) FROM message_sources"))).scalar() == 0
    finally:
        await engine.dispose()


def test_alembic_command_line_url_and_settings_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # env.py's own path (as `alembic upgrade head` runs it): the URL from -x url=..., else from the settings.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOCENT_CONFIG", raising=False)
    monkeypatch.delenv("DOCENT_DATABASE_URL", raising=False)
    monkeypatch.setenv("DOCENT_DATA_DIR", str(tmp_path / "data"))
    command.upgrade(alembic_config(), "0002_documents")
    assert (tmp_path / "data" / "docent.db").exists()

    explicit = tmp_path / "explicit.db"
    cfg = alembic_config()
    cfg.cmd_opts = argparse.Namespace(x=[f"url=sqlite+aiosqlite:///{explicit}"])
    command.upgrade(cfg, "head")

    with sqlite3.connect(explicit) as conn:
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    with sqlite3.connect(tmp_path / "data" / "docent.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002_documents",)]
