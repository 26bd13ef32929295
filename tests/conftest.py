"""Shared fixtures: database URLs for real SQLite files and a real PostgreSQL.

`pg_url` gives each test its own PostgreSQL schema, passed as `?search_path=NAME` on the URL; open it
with bot.db.session.create_engine (plain create_async_engine does not understand that parameter).
With CI set, an unreachable server fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test: tiny models on a shared 2-core machine run faster and independent of
    timing that way. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An async URL for a fresh SQLite file in the test's tmp dir (created on first connect)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'docent.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The test runs twice: on a fresh SQLite file and on a private PostgreSQL schema."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
async def db_session(db_url: str) -> AsyncIterator:
    """An AsyncSession on a fresh database at `db_url` (SQLite, then PostgreSQL), migrated to the latest schema."""
    from bot.db.session import create_engine, session_factory, upgrade

    await upgrade(db_url)
    engine = create_engine(db_url)
    async with session_factory(engine)() as session:
        yield session
    await engine.dispose()


async def _pg_execute(url: str, sql: str) -> None:
    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database, timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An async URL for an empty, private schema in the test PostgreSQL ($DOCENT_TEST_PG_URL); dropped after."""
    base = os.environ.get("DOCENT_TEST_PG_URL", DEFAULT_PG_URL)
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        asyncio.run(_pg_execute(base, f'CREATE SCHEMA "{schema}"'))
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        where = make_url(base).render_as_string(hide_password=True)
        message = f"PostgreSQL at {where} is not usable: {type(e).__name__}: {e}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield make_url(base).update_query_dict({"search_path": schema}).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_execute(base, f'DROP SCHEMA "{schema}" CASCADE'))
