"""Persistence: SQLAlchemy models, engines and sessions, migrations, and one module of queries per kind of
record (chats, messages, documents, sources, jobs, training, stats).

Never imports torch or telegram. Typical use:

    engine = create_engine(load_settings().database_url)
    await upgrade(load_settings().database_url)
    Session = session_factory(engine)
    async with Session() as session:
        message = await messages.record_update_and_user_message(session, ...)
"""

from bot.db.session import create_engine, downgrade, session_factory, upgrade
from bot.db.tables import Base

__all__ = ["Base", "create_engine", "downgrade", "session_factory", "upgrade"]
