"""/summarize as a job: what to summarize (a document of the chat, by name or number, or else the current
conversation), the summarizer (bot.services.summarize) run in its own thread, stoppable with /cancel, its
outcome shown by the caller's status line before the job ends."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.db import documents as documents_db
from bot.services.assistant import Assistant
from bot.services.chats import Origin
from bot.services.compute import in_own_thread
from bot.services.jobs import Jobs
from bot.services.knowledge import KnowledgeBase, chat_scope
from bot.services.summarize import Summary, conversation_text, summarize

log = logging.getLogger(__name__)


@dataclass
class SummaryOutcome:
    status: Literal["done", "no_such_document", "still_indexing", "ambiguous", "empty_conversation", "stopped",
                    "failed"]
    label: str = ""  # the document's name, or "this conversation"
    of_document: bool = False
    summary: Summary | None = None
    detail: str = ""  # the name asked for (the upload's, while it is still being indexed), or why it stopped
    # (jobs.CANCELLED / SHUTDOWN)
    matches: int = 0  # how many documents an ambiguous name matched


class SummaryView(Protocol):
    async def start(self, label: str) -> int: ...  # shows the status line; returns its message id
    def progress(self, part: int, parts: int) -> None: ...  # called from the worker thread
    async def finish(self, outcome: SummaryOutcome) -> None: ...  # shown before the job's row is removed


class Summaries:
    def __init__(self, assistant: Assistant, knowledge: KnowledgeBase, jobs: Jobs):
        self.assistant, self.knowledge, self.jobs = assistant, knowledge, jobs

    async def summarize(self, origin: Origin, target: str, view: SummaryView) -> SummaryOutcome:
        """Summarize the chat's document named or numbered `target`, or the current conversation when it is
        empty; `view` shows the progress and the outcome."""
        await self.assistant.chats.record(origin)  # the job's row names them
        if target:
            pieces, outcome = await self._document(origin.chat_id, target)
        else:
            turns = await self.assistant.current_conversation(origin.chat_id)
            pieces, outcome = conversation_text(turns), SummaryOutcome("done", "this conversation")
            if not pieces:
                outcome.status = "empty_conversation"
        if outcome.status != "done":
            await view.finish(outcome)
            return outcome
        async with self.jobs.track("summary", origin.chat_id, origin.user_id, None, outcome.label) as job:
            await self.jobs.shown(job, await view.start(outcome.label))  # shown once the job's row exists
            try:
                outcome.summary = await in_own_thread(
                    lambda: summarize(pieces, self.knowledge.encoder, conversation=not target, cancel=job.cancel,
                                      progress=view.progress))
            except InterruptedError:
                outcome.status, outcome.detail = "stopped", job.reason or ""
            except Exception:
                log.exception("summary failed in chat %s", origin.chat_id)
                outcome.status = "failed"
            finally:
                job.cancel.set()  # the caller was cancelled: the worker thread stops at its next window
            await view.finish(outcome)
        return outcome

    async def _document(self, chat_id: int, target: str) -> tuple[list[str], SummaryOutcome]:
        """The text of the one document `target` names (its number, its name, or a part of its name); an upload
        of that name still being indexed is said to be."""
        scope = chat_scope(chat_id)
        docs = await self.knowledge.documents(scope)
        matches = [d for d in docs if str(d.id) == target or d.name == target] or \
                  [d for d in docs if target.lower() in d.name.lower()]
        if not matches:
            uploads = self.jobs.running("ingest", chat_id)
            indexing = [j for j in uploads if j.label == target] or \
                       [j for j in uploads if target.lower() in j.label.lower()]
            if indexing:
                return [], SummaryOutcome("still_indexing", detail=indexing[0].label)
        if len(matches) != 1:
            status = "ambiguous" if matches else "no_such_document"
            return [], SummaryOutcome(status, detail=target, matches=len(matches))
        async with self.knowledge.sessions() as s:
            chunks = [c for c in await documents_db.chunks_for_scope(s, scope) if c.document_id == matches[0].id]
        return [c.text for c in chunks], SummaryOutcome("done", matches[0].name, of_document=True)
