"""Alembic environment: migrates the bot's database, SQLite or PostgreSQL, through an async driver.

The URL is, in order: a connection handed over in config.attributes["connection"] (what
bot.db.session.upgrade does), `-x url=...` on the command line, config.attributes["url"], and
otherwise bot.config.load_settings().database_url.
"""

from __future__ import annotations

import asyncio
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy.engine import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # import bot from any working directory

from bot.db.session import migration_engine  # noqa: E402
from bot.db.tables import Base  # noqa: E402

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    if url:
        return url
    from bot.config import load_settings

    return load_settings().database_url


def configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite cannot ALTER constraints; batch mode rebuilds the table
        **kwargs,
    )


def run_on(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            # Foreign keys are off while batch mode rebuilds tables; refuse to commit a broken result.
            bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise RuntimeError(f"migration left rows with dangling foreign keys: {bad[:5]}")


async def run_online(url: str) -> None:
    engine = migration_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline(url: str) -> None:
    configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        run_offline(database_url())
    else:
        asyncio.run(run_online(database_url()))
