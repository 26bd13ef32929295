"""A model worker (`docent serve`) that serves the promoted model version: it reads the active version from the
bot's database, the row that `/promote` and `/rollback` write and that a local bot loads at start-up
(bot.services.training.versions), and swaps its model when that row changes.

Why the worker pulls from the database rather than a replica pushing a reload to every worker URL: PostgreSQL is
already the one source of truth every replica reads, and a pull needs nothing more from the operator. A worker
that was down or restarting when a version was promoted, or one added later, serves the active version as soon
as it starts, where a push would have missed it; a worker needs no endpoint that changes what it serves (it has
no authentication, deploy/cluster/docent-worker.service), and the replica that promotes needs no list of
workers. The price is a delay of up to `[model] follow_s` between the promotion and the workers, and one small
query per period per worker.

A swap loads the new version beside the old one first; a version that does not load is logged and the worker
goes on serving what it served (it tries that version again only after the active row changes). Requests take
the model they start on and finish on it, streams included; the old model's server stops once they have ended.

Where the files are: a version is a directory (a LoRA adapter over its base, or full weights) written by the
replica that trained it, under its `data_dir/versions/`. The worker loads the path in the row, or else the
version's name under its own `data_dir/versions/`: share that directory between the machines (NFS and the like)
or copy a version there before promoting it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.config import Settings
from bot.db import training as training_db
from bot.db.session import create_engine, session_factory
from bot.services.compute import in_own_thread
from bot.services.lm_gateway import ChatModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """The model the database says should serve: a version (its id, name and directory) or the configured one."""

    version_id: int | None
    label: str
    path: str


def follows(settings: Settings) -> bool:
    """Whether a worker with these settings follows a database: one named by `[database] url`
    (DOCENT_DATABASE_URL), or the bot's default SQLite file when the worker shares its data directory."""
    if settings.model.follow_s <= 0:
        return False
    if settings.database.url:
        return True
    database = make_url(settings.database_url).database
    return bool(database) and Path(database).is_file()


class VersionFollower:
    """Reads the active version every `[model] follow_s` and hands each newly loaded model to `install`."""

    def __init__(self, settings: Settings, install: Callable[[ChatModel], None]):
        self.settings = settings
        self.install = install
        self.engine = create_engine(settings.database_url)
        self.sessions = session_factory(self.engine)
        self.serving: Wanted | None = None
        self._refused: Wanted | None = None  # a version that did not load: not tried again until the row changes

    async def wanted(self) -> Wanted:
        """What the database says should serve now."""
        async with self.sessions() as s:
            version = await training_db.active_version(s)
        if version is None:
            return Wanted(None, self.settings.model.name, self.settings.model.name)
        return Wanted(version.id, version.name, self._files(version.name, version.path))

    def _files(self, name: str, path: str) -> str:
        """The version's directory: as the row names it, else under this worker's own versions directory."""
        own = self.settings.data_dir / "versions" / name
        return str(own) if not Path(path).is_dir() and own.is_dir() else path

    async def load(self, wanted: Wanted) -> ChatModel:
        model = await in_own_thread(ChatModel.load, self.settings, wanted.path, wanted.version_id)
        model.label = wanted.label
        return model

    async def first(self) -> ChatModel:
        """The model to start with: the active version, else (no database yet, or it does not load) the
        configured one."""
        try:
            wanted = await self.wanted()
        except Exception as e:  # the bot has not created its tables yet, or the database is down
            log.warning("could not read the active model version (%s): serving %s", e, self.settings.model.name)
            wanted = Wanted(None, self.settings.model.name, self.settings.model.name)
        if wanted.version_id is not None:
            try:
                model = await self.load(wanted)
                self.serving = wanted
                return model
            except Exception:
                log.exception("could not load the active model version %s (%s); serving %s", wanted.label,
                              wanted.path, self.settings.model.name)
                self._refused = wanted
        model = await self.load(Wanted(None, self.settings.model.name, self.settings.model.name))
        self.serving = Wanted(None, self.settings.model.name, self.settings.model.name)
        return model

    async def check(self) -> bool:
        """Swap to the active version if it changed since the last check. Whether a new model was installed."""
        wanted = await self.wanted()
        if self.serving is not None and wanted.version_id == self.serving.version_id:
            self._refused = None
            return False
        if wanted == self._refused:
            return False
        log.info("active model version is now %s: loading %s", wanted.label, wanted.path)
        try:
            model = await self.load(wanted)
        except Exception:
            log.exception("could not load model version %s (%s); still serving %s", wanted.label, wanted.path,
                          self.serving.label if self.serving else "the model it had")
            self._refused = wanted
            return False
        self.serving, self._refused = wanted, None
        self.install(model)
        return True

    async def run(self) -> None:
        """Check every `[model] follow_s` until cancelled; a failed check (the database restarting) is logged and
        the next one tries again."""
        try:
            while True:
                await asyncio.sleep(self.settings.model.follow_s)
                try:
                    await self.check()
                except Exception as e:
                    log.warning("could not check the active model version: %s", e)
        finally:
            await self.engine.dispose()
