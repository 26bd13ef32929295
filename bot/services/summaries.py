"""/summarize as a job: what to summarize (a document of the chat, by name or number, or else the current
conversation), who writes the summary, run in its own thread, stoppable with /cancel, its outcome shown by
the caller's status line before the job ends.

Who writes it ([documents] summary_writing): the chat model, map-reduce over the whole document with every
sentence held to the source (bot.services.summary_writer), or extracted sentences (bot.services.summary_pipeline;
for a conversation, what was asked, answered and decided, from its own sentences). "auto" lets the model write
when it is big enough not to invent as soon as it writes (WRITER_MIN_PARAMS, by its decoder's size: SmolLM2-135M
and Gemma 3 270M extract; Qwen2.5 0.5B and up write), and falls back to extraction when nothing the model
wrote survives the check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

from bot.db import document_queries
from bot.services.chat_settings import Chats, Origin
from bot.services.compute import in_own_thread
from bot.services.conversation_store import ConversationStore
from bot.services.knowledge import KnowledgeBase, chat_scope
from bot.services.lm_gateway import ModelManager
from bot.services.long_jobs import Jobs
from bot.services.summary_pipeline import Summary, conversation_digest, conversation_text, summarize
from bot.services.summary_writer import Written, model_writer, section_budget, write_summary
from bot.services.summary_writer import write_conversation_summary as write_about_conversation
from bot.telegram.texts import CONVERSATION_LABEL

log = logging.getLogger(__name__)

WRITER_MIN_PARAMS = 250e6  # decoder weights (embeddings not counted) of a model that writes summaries in "auto"
PROSE_SENTENCES = 3  # a written summary of up to this many sentences is a paragraph; a longer one, bullets


def decoder_params(config) -> float:
    """The weights of a decoder's layers (embeddings left out), from its lm.config.ModelConfig."""
    head = config.key_length or config.dim // config.n_heads
    attention = config.dim * head * (2 * config.n_heads + 2 * config.n_kv_heads)
    return config.n_layers * (attention + 3 * config.dim * config.hidden_dim)


def model_writes(mode: str, model) -> bool:
    """Whether the chat model writes the summary: [documents] summary_writing, "auto" by the model's size."""
    if mode in ("model", "extract"):
        return mode == "model"
    return decoder_params(model.model.config) >= WRITER_MIN_PARAMS


def as_summary(written: Written) -> Summary:
    """A written summary in the shape the bot shows: a paragraph, or bullets when it is longer."""
    sentences = written.sentences
    text = " ".join(sentences) if len(sentences) <= PROSE_SENTENCES else "\n".join(f"- {s}" for s in sentences)
    return Summary(sentences, text, unsupported=written.unsupported, written=True, sections=written.sections,
                   drawn=written.drawn)


@dataclass
class SummaryOutcome:
    status: Literal["done", "no_such_document", "still_indexing", "ambiguous", "empty_conversation", "stopped",
                    "failed"]
    label: str = ""  # the document's name, or CONVERSATION_LABEL
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
    def __init__(self, chats: Chats, store: ConversationStore, models: ModelManager, knowledge: KnowledgeBase,
                 jobs: Jobs, writing: str = "auto"):
        self.chats, self.store, self.models, self.knowledge, self.jobs = chats, store, models, knowledge, jobs
        self.writing = writing  # [documents] summary_writing

    async def summarize(self, origin: Origin, target: str, view: SummaryView) -> SummaryOutcome:
        """Summarize the chat's document named or numbered `target`, or the current conversation when it is
        empty; `view` shows the progress and the outcome."""
        await self.chats.record(origin)  # the job's row names them
        turns: list[dict] = []
        if target:
            pieces, outcome = await self._document(origin.chat_id, target)
        else:
            turns = await self.store.current_conversation(origin.chat_id)
            pieces, outcome = conversation_text(turns), SummaryOutcome("done", CONVERSATION_LABEL)
            if not pieces:
                outcome.status = "empty_conversation"
        if outcome.status != "done":
            await view.finish(outcome)
            return outcome
        async with self.jobs.track("summary", origin.chat_id, origin.user_id, None, outcome.label) as job:
            await self.jobs.shown(job, await view.start(outcome.label))  # shown once the job's row exists
            try:
                model = await self.models.current()
                writes = model_writes(self.writing, model)
                outcome.summary = await in_own_thread(
                    lambda: self._summary(pieces, turns, model if writes else None, job.cancel, view.progress))
            except InterruptedError:
                outcome.status, outcome.detail = "stopped", job.reason or ""
            except Exception:
                log.exception("summary failed in chat %s", origin.chat_id)
                outcome.status = "failed"
            finally:
                job.cancel.set()  # the caller was cancelled: the worker thread stops at its next window
            await view.finish(outcome)
        return outcome

    def _summary(self, pieces: list[str], turns: list[dict], model, cancel, progress) -> Summary:
        """The summary of a document's pieces, or of a conversation's turns when there are any (blocking):
        written by `model` when it is given and something it wrote passes the check, else extracted."""
        if model is not None:
            write, budget = model_writer(model, cancel), section_budget(model.context_tokens)
            written = (write_about_conversation(pieces, write, model.count_tokens, section_tokens=budget,
                                                  progress=progress, cancel=cancel) if turns else
                       write_summary(pieces, write, model.count_tokens, section_tokens=budget, progress=progress,
                                     cancel=cancel))
            if written.sentences:
                return as_summary(written)
            log.info("nothing the model wrote passed the check; the summary is extracted")
        if turns:
            return conversation_digest(turns)
        return summarize(pieces, self.knowledge.encoder, cancel=cancel, progress=progress)

    async def _document(self, chat_id: int, target: str) -> tuple[list[str], SummaryOutcome]:
        """The text of the one document `target` names (its number, its name, or a part of its name); an upload
        of that name still being indexed is said to be."""
        scope = chat_scope(chat_id)
        docs = await self.knowledge.documents(scope)
        numbered = [d for n, d in enumerate(docs, 1) if str(n) == target]  # its number in /docs, not its id
        matches = numbered or [d for d in docs if d.name == target] or \
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
            chunks = [c for c in await document_queries.chunks_for_scope(s, scope) if c.document_id == matches[0].id]
        return pages(chunks), SummaryOutcome("done", matches[0].name, of_document=True)


def pages(chunks) -> list[str]:
    """A stored document's text as pieces: its chunks joined page by page (a PDF) or by heading, in order,
    so that the summary's sections follow the document's own; the chunks' overlaps stay (the summarizers
    drop repeated sentences)."""
    out: list[str] = []
    last = object()
    for chunk in sorted(chunks, key=lambda c: c.ordinal):
        key = chunk.page if chunk.page is not None else chunk.heading
        if out and key == last:
            out[-1] += "\n\n" + chunk.text
        else:
            out.append(chunk.text)
        last = key
    return out
