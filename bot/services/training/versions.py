"""Model versions: the promoted fine-tunes in data_dir/versions/, which one serves, and switching between them
without a restart.

A finished run's directory is renamed into data_dir/versions/ (one atomic step, so a version directory is
always complete) before its model_versions row is written. A version becomes the one that serves only after
it has loaded, so one that does not load never becomes active; replies already streaming finish on the old
model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import training as training_db
from bot.db.tables import ModelVersion

log = logging.getLogger(__name__)


class UnknownVersion(ValueError):
    """No model version has this id."""

    def __init__(self, version_id: int):
        super().__init__(f"no model version {version_id}")
        self.version_id = version_id


class VersionFilesMissing(ValueError):
    """The version's row exists but its directory is gone, so it cannot be served."""

    def __init__(self, version_id: int):
        super().__init__(f"version {version_id}'s files are missing")
        self.version_id = version_id


class ModelVersions:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models):
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self._switch = asyncio.Lock()

    @property
    def root(self) -> Path:
        return self.settings.data_dir / "versions"

    async def all(self) -> list[ModelVersion]:
        async with self.sessions() as s:
            return await training_db.list_versions(s)

    async def get(self, version_id: int) -> ModelVersion | None:
        async with self.sessions() as s:
            return await training_db.get_version(s, version_id)

    async def active(self) -> tuple[str, int | None]:
        """(name or path, version id) of the model that should be serving replies."""
        async with self.sessions() as s:
            version = await training_db.active_version(s)
        return (version.path, version.id) if version else (self.settings.model.name, None)

    async def register(self, run_id: int, out: Path, base: str, data_size: int | None,
                       heldout_loss: float | None, notes: dict) -> ModelVersion:
        """A finished run's model directory `out`, moved into the versions (inactive) and recorded."""
        target = self.root / f"run-{run_id}"
        self.root.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.replace(out, target)  # one rename: the version directory appears complete or not at all
        async with self.sessions() as s:
            return await training_db.add_version(s, name=f"run-{run_id}", base=base, path=str(target),
                                                 data_size=data_size, heldout_loss=heldout_loss,
                                                 notes=json.dumps(notes))

    async def activate(self, version_id: int | None) -> ModelVersion | None:
        """Serve a version (None: the configured model). It is loaded first, so one that does not load never
        becomes active; replies already streaming finish on the old model. Raises UnknownVersion or
        VersionFilesMissing (both ValueErrors), RuntimeError (the cause chained) when the model does not load."""
        async with self._switch:
            if version_id is None:
                path = self.settings.model.name
            else:
                version = await self.get(version_id)
                if version is None:
                    raise UnknownVersion(version_id)
                if not Path(version.path).is_dir():
                    log.warning("version %s's directory %s is missing", version_id, version.path)
                    raise VersionFilesMissing(version_id)
                path = version.path
            try:
                await self.models.swap(path, version_id)
            except Exception as e:  # a damaged file's ValueError (bad JSON) must not pass for a bad argument
                raise RuntimeError(f"could not load {path}") from e
            async with self.sessions() as s:
                return await training_db.set_active(s, version_id)

    async def restore(self) -> ModelVersion | None:
        """Load the active version from SQL instead of the configured model. A version that fails to load is
        logged and the configured model serves; SQL is left as it is for an admin to /rollback."""
        async with self.sessions() as s:
            version = await training_db.active_version(s)
        if version is None:
            return None
        try:
            await self.models.swap(version.path, version.id)
        except Exception:
            log.exception("could not load the active model version %s (%s); serving %s", version.id, version.path,
                          self.settings.model.name)
            return None
        return version
