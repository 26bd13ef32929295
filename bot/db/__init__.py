"""Persistence: SQLAlchemy models, engines and sessions, migrations, and the queries services call.

Never imports torch or telegram. Typical use:

    engine = create_engine(load_settings().database_url)
    await upgrade(load_settings().database_url)
    Session = session_factory(engine)
    async with Session() as session:
        message = await queries.record_update_and_user_message(session, ...)
"""

from bot.db import queries
from bot.db.models import Base
from bot.db.session import create_engine, downgrade, session_factory, upgrade

__all__ = ["Base", "create_engine", "downgrade", "queries", "session_factory", "upgrade"]
