"""The services: everything the bot does, with no Telegram types, each built once by `build_services`.

bot.app (the Telegram bot) and the `docent` commands build them and call them; a Telegram handler makes one
call into a service per user action. Services never import python-telegram-bot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.config import Settings

if TYPE_CHECKING:  # imported by build_services: `import bot.services.answer` must not load every service
    from bot.services.assistant import Assistant
    from bot.services.chat_settings import Chats
    from bot.services.knowledge import KnowledgeBase
    from bot.services.lm_gateway import ModelManager
    from bot.services.long_jobs import Jobs
    from bot.services.summaries import Summaries
    from bot.services.training.service import TrainingService
    from bot.services.uploads import Uploads
    from bot.services.usage_stats import StatsService
    from bot.services.work_leases import Leases


@dataclass
class Services:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    models: ModelManager  # the chat model, loaded once and swapped when an admin promotes a version
    chats: Chats  # chat settings, /reset, feedback
    knowledge: KnowledgeBase  # documents: indexing, search, /docs, /forget
    jobs: Jobs  # uploads, summaries and replies in flight, for /cancel and restarts
    assistant: Assistant  # replies: from the conversation, or answers from the chat's documents
    uploads: Uploads  # an uploaded file indexed as a job
    summaries: Summaries  # /summarize
    stats: StatsService  # /stats
    training: TrainingService  # /retrain and model versions
    leases: Leases  # this process's leases on its work in SQL, for replicas on one database


def build_services(settings: Settings, sessions: async_sessionmaker[AsyncSession],
                   models: ModelManager | None = None) -> Services:
    """Every service, wired to the others; `models` may be given (tests share one loaded model)."""
    # here, not at the top: every bot.services module imports this package first (a cycle otherwise), and the
    # services cost about 1 s to import (assistant 0.55 s, the training service 0.42 s, measured)
    from bot.services.assistant import Assistant
    from bot.services.chat_settings import Chats
    from bot.services.conversation_store import ConversationStore
    from bot.services.knowledge import KnowledgeBase
    from bot.services.lm_gateway import ModelManager
    from bot.services.long_jobs import Jobs
    from bot.services.summaries import Summaries
    from bot.services.training.service import TrainingService
    from bot.services.uploads import Uploads
    from bot.services.usage_stats import StatsService
    from bot.services.work_leases import leases_for

    leases = leases_for(settings, sessions)
    models = models or ModelManager(settings)
    chats = Chats(settings, sessions)
    knowledge = KnowledgeBase(settings, sessions, leases)
    jobs = Jobs(sessions, leases)
    store = ConversationStore(sessions, chats, leases)
    assistant = Assistant(settings, store, models, knowledge, jobs)
    return Services(
        settings=settings, sessions=sessions, models=models, chats=chats, knowledge=knowledge, jobs=jobs,
        assistant=assistant, uploads=Uploads(chats, knowledge, jobs),
        summaries=Summaries(chats, store, models, knowledge, jobs, settings.documents.summary_writing),
        stats=StatsService(settings, sessions), training=TrainingService(settings, sessions, models, chats, leases=leases),
        leases=leases)


async def open_services(settings: Settings, models: ModelManager | None = None) -> tuple[AsyncEngine, Services]:
    """For a command that runs once (`docent ingest`, `docent ask`, the evals, the benches): the services over
    settings' database, migrated to the latest schema first, and its engine, which the caller disposes of."""
    from bot.db.session import create_engine, session_factory, upgrade

    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    return engine, build_services(settings, session_factory(engine), models)
