"""An uploaded file indexed as a job: recorded for /cancel and restarts, downloaded, parsed, chunked, embedded
and stored (KnowledgeBase.ingest), its outcome shown by the caller's status line before the job ends. /forget
lives here too: a document may still be an upload being indexed, which forgetting stops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.db.sources import AmbiguousName, Forgotten, NotAllowedToForget
from bot.documents.parse import DocumentError
from bot.services.chat_settings import Chats, Origin
from bot.services.knowledge import Ingested, KnowledgeBase, chat_scope
from bot.services.long_jobs import CANCELLED, Jobs, Running

log = logging.getLogger(__name__)


class DownloadFailed(Exception):
    """The file could not be fetched from where the user sent it (the message says why)."""


@dataclass
class UploadOutcome:
    status: Literal["indexed", "duplicate", "still_indexing", "rejected", "download_failed", "stopped", "failed"]
    result: Ingested | None = None
    detail: str = ""  # why it was rejected, why the download failed, or why it stopped (jobs.CANCELLED/SHUTDOWN)


@dataclass
class ForgetOutcome:
    """What /forget did: "forgotten" a ready document; "stopped" the indexing of an upload, so nothing of it is
    stored; "forgotten_when_indexed": the upload's indexing ended before it could stop, and the document was then
    forgotten; or nothing, and why ("no_such_document", "ambiguous", "not_allowed")."""

    status: Literal["forgotten", "stopped", "forgotten_when_indexed", "no_such_document", "ambiguous",
                    "not_allowed"]
    name: str  # the name asked for, or the upload's
    forgotten: Forgotten | None = None
    refused: NotAllowedToForget | None = None  # "not_allowed" for a ready document: who may forget it
    numbers: list[int] = field(default_factory=list)  # "ambiguous": the numbers in /docs that share the name


class UploadView(Protocol):
    async def start(self) -> int: ...  # shows the status line, once the job's row is stored; returns its message id
    def progress(self, stage: str, fraction: float) -> None: ...  # called from worker threads
    async def finish(self, outcome: UploadOutcome) -> None: ...  # shown before the job's row is removed


class Uploads:
    def __init__(self, chats: Chats, knowledge: KnowledgeBase, jobs: Jobs):
        self.chats, self.knowledge, self.jobs = chats, knowledge, jobs

    async def index(self, origin: Origin, name: str, filename: str, mime: str | None,
                    download: Callable[[], Awaitable[bytes]], view: UploadView) -> UploadOutcome:
        """Index the file `download()` fetches for the chat, as a job that /cancel stops; `view` shows how it
        went (its status line is shown once the job's SQL row exists, and told the outcome before the row goes, so
        a restart never finds a status line it does not know or a job half reported)."""
        await self.chats.record(origin)  # the document is filed under them
        async with self.jobs.track("ingest", origin.chat_id, origin.user_id, None, name) as job:
            await self.jobs.shown(job, await view.start())
            outcome = job.outcome = await self._index(origin, filename, mime, download, view, job)
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

    async def forget(self, origin: Origin, target: str, *, any_document: bool,
                     stopping: Callable[[str], Awaitable[None]]) -> ForgetOutcome:
        """Forget the chat's document `target` (its name, or its number in /docs) with the answers drawn on it, or,
        while an upload of that name is still being indexed, stop it (`stopping(name)` is awaited first, to say
        so) and forget the document if its indexing ended before it could stop. Without `any_document` only the
        uploader may."""
        uploads = [j for j in self.jobs.running("ingest", origin.chat_id) if j.label == target]
        if uploads:
            return await self._stop_upload(origin, uploads, any_document, stopping)
        scope = chat_scope(origin.chat_id)
        try:
            forgotten = await self.knowledge.forget(scope, target, requester_id=origin.user_id,
                                                    any_document=any_document)
        except AmbiguousName as e:
            return ForgetOutcome("ambiguous", target, numbers=e.numbers)
        except NotAllowedToForget as e:
            return ForgetOutcome("not_allowed", target, refused=e)
        return ForgetOutcome("forgotten", target, forgotten) if forgotten else ForgetOutcome("no_such_document", target)

    async def _stop_upload(self, origin: Origin, uploads: list[Running], any_document: bool,
                           stopping: Callable[[str], Awaitable[None]]) -> ForgetOutcome:
        """Stop uploads being indexed (all of one name) and wait until each has ended and shown how; a document
        one of them stored all the same (it was past its last step) is forgotten then."""
        name = uploads[0].label
        if not any_document and any(j.user_id != origin.user_id for j in uploads):
            return ForgetOutcome("not_allowed", name)
        await stopping(name)
        for job in uploads:
            job.stop(CANCELLED)
        outcome = ForgetOutcome("stopped", name)
        for job in uploads:
            await job.ended.wait()
            done = job.outcome
            if isinstance(done, UploadOutcome) and done.status == "indexed":
                forgotten = await self.knowledge.forget(chat_scope(origin.chat_id), str(done.result.document.id))
                if forgotten is not None:
                    outcome = ForgetOutcome("forgotten_when_indexed", name, forgotten)
        return outcome
