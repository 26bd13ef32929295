"""Engines, sessions and schema upgrades.

`create_engine` is the one place an engine is made, so that every SQLite connection gets the same
pragmas (WAL, foreign keys, busy timeout) and a PostgreSQL URL may carry `?search_path=NAME` (asyncpg
has no URL spelling for it; tests use it to give each test its own schema). `upgrade` / `downgrade`
run Alembic in-process on an async engine, wherever the current directory is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
MIGRATIONS_DIR = REPO_ROOT / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
MIGRATION_LOCK = 0x646F63656E74  # PostgreSQL advisory lock key held while migrating ("docent")


def _sqlite_file(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def create_engine(url: str | URL, *, foreign_keys: bool = True, **kwargs: Any) -> AsyncEngine:
    """An AsyncEngine for an async URL (sqlite+aiosqlite or postgresql+asyncpg); kwargs go to SQLAlchemy."""
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if path is not None:
                cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        return engine
    if backend == "postgresql" and "search_path" in url.query:
        search_path = url.query["search_path"]
        connect_args = dict(kwargs.pop("connect_args", {}))
        settings = dict(connect_args.get("server_settings", {}))
        settings["search_path"] = search_path if isinstance(search_path, str) else ",".join(search_path)
        connect_args["server_settings"] = settings
        url = url.difference_update_query(["search_path"])
        return create_async_engine(url, connect_args=connect_args, **kwargs)
    return create_async_engine(url, **kwargs)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reloads under asyncio)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | URL | None = None) -> Config:
    """The project's Alembic config, found relative to this package rather than the current directory."""
    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.attributes["url"] = make_url(url).render_as_string(hide_password=False)
    return cfg


def migration_engine(url: str | URL) -> AsyncEngine:
    """An engine for schema changes: no pool; on SQLite, foreign keys off and DDL inside the transaction."""
    engine = create_engine(url, foreign_keys=False, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        # The sqlite3 module commits DDL on its own; take over BEGIN so a failed migration rolls back whole.
        @event.listens_for(engine.sync_engine, "connect")
        def _manual_transactions(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


async def _run_alembic(url: str | URL, fn: Any, revision: str) -> None:
    cfg = alembic_config(url)

    def run(conn: Connection) -> None:
        cfg.attributes["connection"] = conn  # env.py migrates on this connection instead of its own
        fn(cfg, revision)

    engine = migration_engine(url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas starting together migrate one after another
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            await conn.run_sync(run)
    finally:
        await engine.dispose()


async def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at url up to revision."""
    await _run_alembic(url, command.upgrade, revision)


async def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the database at url down to revision ("base" drops every table)."""
    await _run_alembic(url, command.downgrade, revision)


# ---- helpers of the query modules ---------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


def check_choice(value: Any, allowed: Any, what: str) -> None:
    """ValueError, fit to show a person, unless `value` is one of the Literal type `allowed`'s options."""
    options = get_args(allowed)
    if value not in options:
        raise ValueError(f"{what} must be one of {', '.join(map(str, options))}, not {value!r}")


def upsert(session: AsyncSession, table: Any) -> Any:
    """INSERT with ON CONFLICT support for the session's backend (both spell it the same way)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
