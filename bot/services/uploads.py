"""An uploaded file indexed as a job: recorded for /cancel and restarts, downloaded, parsed, chunked, embedded
and stored (KnowledgeBase.ingest), its outcome shown by the caller's status line before the job ends."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.documents.parse import DocumentError
from bot.services.chats import Chats, Origin
from bot.services.jobs import Jobs
from bot.services.knowledge import Ingested, KnowledgeBase, chat_scope

log = logging.getLogger(__name__)


class DownloadFailed(Exception):
    """The file could not be fetched from where the user sent it (the message says why)."""


@dataclass
class UploadOutcome:
    status: Literal["indexed", "duplicate", "still_indexing", "rejected", "download_failed", "stopped", "failed"]
    result: Ingested | None = None
    detail: str = ""  # why it was rejected, why the download failed, or why it stopped (jobs.CANCELLED/SHUTDOWN)


class UploadView(Protocol):
    def progress(self, stage: str, fraction: float) -> None: ...  # called from worker threads
    async def finish(self, outcome: UploadOutcome) -> None: ...  # shown before the job's row is removed


class Uploads:
    def __init__(self, chats: Chats, knowledge: KnowledgeBase, jobs: Jobs):
        self.chats, self.knowledge, self.jobs = chats, knowledge, jobs

    async def index(self, origin: Origin, name: str, filename: str, mime: str | None, status_message_id: int,
                    download: Callable[[], Awaitable[bytes]], view: UploadView) -> UploadOutcome:
        """Index the file `download()` fetches for the chat, as a job that /cancel stops; `view` shows how it
        went (and is told before the job's SQL row goes, so a restart never finds it half reported)."""
        await self.chats.record(origin)  # the document is filed under them
        async with self.jobs.track("ingest", origin.chat_id, origin.user_id, status_message_id, name) as job:
            outcome = await self._index(origin, filename, mime, download, view, job)
            await view.finish(outcome)
        return outcome

    async def _index(self, origin: Origin, filename: str, mime: str | None, download, view, job) -> UploadOutcome:
        try:
            data = await download()
        except DownloadFailed as e:
            return UploadOutcome("download_failed", detail=str(e))
        try:
            result = await self.knowledge.ingest(chat_scope(origin.chat_id), data, filename, mime,
                                                 chat_id=origin.chat_id, progress=view.progress,
                                                 user_id=origin.user_id, stop=job.check)
        except DocumentError as e:
            return UploadOutcome("rejected", detail=e.message)
        except InterruptedError:
            return UploadOutcome("stopped", detail=job.reason or "")
        except Exception:
            log.exception("ingest of %s failed in chat %s", filename, origin.chat_id)
            return UploadOutcome("failed")
        if result.duplicate:
            return UploadOutcome("duplicate" if result.document.status == "ready" else "still_indexing", result)
        return UploadOutcome("indexed", result)
