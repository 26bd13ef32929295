"""Usage statistics for /stats: what a user did in a chat (today, UTC, and in all) and, for admins, every
chat's totals and the model version that serves replies. Numbers only; the wording is the handler's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import stats_queries
from bot.db import training as training_db
from bot.db.tables import ModelVersion


@dataclass
class Overview:
    """What admins see besides their own numbers."""

    chats: list[stats_queries.ChatTotals]  # busiest first
    version: ModelVersion | None  # the active trained version; None: the configured model serves
    configured_model: str


@dataclass
class Stats:
    user: stats_queries.UserStats  # `since` is the start of today, UTC
    overview: Overview | None  # only when asked for (admins)


def start_of_day(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class StatsService:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]):
        self.settings = settings
        self.sessions = sessions

    async def chat_stats(self, chat_id: int, user_id: int, overview: bool) -> Stats:
        """`user_id`'s numbers in `chat_id`, plus every chat's totals and the model in use when `overview`."""
        async with self.sessions() as s:
            mine = await stats_queries.user_stats(s, chat_id, user_id, start_of_day())
            if not overview:
                return Stats(mine, None)
            return Stats(mine, Overview(await stats_queries.chat_totals(s), await training_db.active_version(s),
                                        self.settings.model.name))
