"""Replying in a conversation: the user's message and its reply, from storing the one to storing the other.

The SQL is the conversation store's (bot.services.conversation_store); the prompt, or the answer from the chat's
documents, is built here; the model streams through the gateway (bot.services.lm_gateway). `reply()` is the whole
turn, as events for the caller to show, the model's own passed on as they come:

    AlreadyAnswered            Telegram delivered this update before; nothing else follows
    Accepted(starting_up)      stored, and its turn: the caller shows the reply's first message and, before
                               asking for the next event, sets `shown_in` to its Telegram message id
    Queued(ahead) / Started    (lm's) the reply waits for its place in the batch, then has it
    str                        the next piece of the reply's text
    Done(text, rated)          the final text, stored; `rated`: a complete reply to rate
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TypeAlias

from bot.config import Settings
from bot.db.tables import Message
from bot.safe_text import storable
from bot.services import answer
from bot.services import lm_gateway as gateway
from bot.services.conversation_store import Context, ConversationStore, Incoming
from bot.services.knowledge import KnowledgeBase, chat_scope
from bot.services.lm_gateway import ChatModel, ModelManager, generation_config
from bot.services.long_jobs import CANCELLED, Jobs
from bot.telegram.texts import (
    FAILED_NOTE,
    INTERRUPTED_NOTE,
    MODEL_FAILED,
    NOT_FROM_DOCUMENTS,
    STOPPED_NOTE,
    TIMED_OUT_NOTE,
    TOO_LONG_MARK,
)
from bot.text.reply_text import strip_invented_sources

log = logging.getLogger(__name__)



@dataclass
class AlreadyAnswered:
    """The update was handled before (Telegram delivers an update again after a restart)."""


@dataclass
class Accepted:
    """The message and its reply row are stored and it is the reply's turn: the caller shows the reply's first
    message (`starting_up`: the model is still loading) and sets `shown_in` to its Telegram message id before it
    asks for the next event, so that the id is stored before anything slow and a restart edits that message."""

    starting_up: bool
    shown_in: int | None = None


@dataclass
class Done:
    """The final text, stored; `rated`: a complete reply, to be offered 👍/👎; `too_long`: there is no reply
    because the message alone does not fit the model's context (the caller says so in the user's terms)."""

    text: str
    rated: bool
    too_long: bool = False


ReplyEvent: TypeAlias = "AlreadyAnswered | Accepted | gateway.Queued | gateway.Started | str | Done"
# the caller's one-reply-in-flight guard, entered once the message and its reply row are stored: `queue(shown)`
# is an async context manager held while the reply is written; a reply that must first wait for an earlier one
# shows that it waits and calls `shown(message_id)`, so that the message saying so is known to a restart
Queue = Callable[[Callable[[int], Awaitable[None]]], AbstractAsyncContextManager[None]]


def no_queue(shown: Callable[[int], Awaitable[None]]) -> AbstractAsyncContextManager[None]:
    """A Queue that never waits."""
    return contextlib.nullcontext()


@dataclass
class _Written:
    """The reply as it is written: a chat reply's text, or a document answer's (with the passages it drew on)."""

    text: str = ""
    note: str = ""  # how it ended, when not by itself
    status: str = "complete"
    too_long: bool = False
    chunk_ids: list[int] = field(default_factory=list)


class Assistant:
    def __init__(self, settings: Settings, store: ConversationStore, models: ModelManager,
                 knowledge: KnowledgeBase, jobs: Jobs):
        self.settings, self.store, self.models, self.knowledge, self.jobs = settings, store, models, knowledge, jobs

    async def reply(self, incoming: Incoming, force_documents: bool = False,
                    queue: Queue = no_queue) -> AsyncIterator[ReplyEvent]:
        """Store the user's message once, then, in its turn (`queue`), write, stream and store the reply to it
        (see the module's docstring for the events). `force_documents` (/ask): answer from the chat's documents
        only."""
        turn = await self.store.begin(incoming)
        if turn is None:
            yield AlreadyAnswered()
            return
        # the reply row was stored with the question, before anything shown or slow (an earlier reply to wait
        # for, the model still loading): a restart at any point after finds it and answers or marks it, in its
        # message once known
        question, reply = turn
        its_turn = False
        try:
            async with queue(lambda shown: self.store.show_reply_in(reply, shown)):
                its_turn = True
                accepted = Accepted(starting_up=not self.models.loaded)
                try:
                    yield accepted
                except BaseException:  # the caller could not show it, or gave up
                    await self.store.finish_reply(reply, FAILED_NOTE, "failed")
                    raise
                async for event in self._write(question, reply, accepted.shown_in, force_documents):
                    yield event
        except Exception:
            if not its_turn:  # telling the user it waits failed; a cancelled wait is left to restart recovery
                await self.store.finish_reply(reply, FAILED_NOTE, "failed")
            raise

    async def _write(self, question: Message, reply: Message, shown_in: int | None,
                     force_documents: bool) -> AsyncIterator[ReplyEvent]:
        """Write, stream and store the reply to a stored question (`reply`: its row, shown in `shown_in`)."""
        context = None
        try:
            context = await self.store.context(question, reply, shown_in)  # before the model: loading it is slow
            model = await self.models.current()
        except Exception:
            log.exception("could not %s for chat %s", "load the chat model" if context else "read the conversation",
                          question.chat_id)
            failed = MODEL_FAILED if context else FAILED_NOTE
            yield Done(failed, rated=False)
            await self.store.finish_reply(reply, failed, "failed")
            return
        written = _Written()
        try:
            async for event in self._compose(model, question, context, force_documents, written):
                yield event
        except Exception as e:
            written.status = "failed"
            if isinstance(e, gateway.ContextOverflow):  # the user's message alone: the detail is for the log only
                log.info("message %s in chat %s does not fit the context: %s", question.id, question.chat_id, e)
                written.note, written.too_long = TOO_LONG_MARK, True
            else:
                log.exception("reply failed in chat %s", question.chat_id)
                written.note = FAILED_NOTE
        text, note = written.text.strip(), written.note
        final = (text + note) if text else (note.strip() or "(no reply)")
        if written.status != "complete":
            await self.store.finish_reply(reply, final, written.status, version_id=model.version_id)
            yield Done(final, rated=False, too_long=written.too_long)
            return
        # the final text goes to SQL before it is shown, still "streaming" but with its token count: a crash
        # between the two then redelivers it on restart instead of leaving a half-streamed message behind
        await self.store.finish_reply(reply, final, "streaming", token_count=model.count_tokens(final),
                                      version_id=model.version_id, question=question, chunk_ids=written.chunk_ids)
        yield Done(final, rated=True)
        await self.store.finish_reply(reply, final, "complete")

    async def _compose(self, model: ChatModel, question: Message, context: Context, force_documents: bool,
                       out: _Written) -> AsyncIterator[ReplyEvent]:
        """The reply to the conversation's last user message, `question`, left in `out`.

        In a chat with documents, a message that retrieval finds them to be about is answered from them
        (answer.answer_question); small talk and general questions there, and every message in a chat without
        documents, get a chat reply, streamed. `/ask` (force_documents) always answers from the documents.
        """
        messages = context.messages
        if force_documents or context.has_documents:
            earlier = [m["content"] for m in messages[1:-1] if m["role"] == "user"]
            scope = chat_scope(question.chat_id)
            result = await answer.answer_question(messages[-1]["content"], knowledge=self.knowledge, model=model,
                                                  scope=scope, recent_questions=earlier, force=force_documents)
            if result.about_documents or force_documents:
                out.text, out.chunk_ids = result.render(), [e.passage.chunk_id for e in result.evidence]
                return
        sampling = generation_config(self.settings.model, temperature=context.prefs.temperature)
        async for event in self._generate(model, messages, sampling, question, out):
            yield event
        # a chat reply draws on no document: a source line or web address in it was made up
        out.text = strip_invented_sources(out.text)
        if out.text and context.had_documents and answer.is_question(question.text):
            out.text += f"\n\n{NOT_FROM_DOCUMENTS}"  # its documents were forgotten: say this is not from them
        if out.note and not out.text.strip():
            out.status = "failed"  # stopped before any text: nothing to keep as a turn of the conversation

    async def _generate(self, model: ChatModel, messages: list[dict], sampling: gateway.GenerationConfig,
                        question: Message, out: _Written) -> AsyncIterator[ReplyEvent]:
        """Stream the model's events until the reply ends, times out or its user sends /cancel; the text and how
        it ended are left in `out`."""
        limit = self.settings.telegram.generation_timeout_s
        loop = asyncio.get_running_loop()
        deadline, started = None, time.monotonic()  # the time limit counts from the start of generation:
        with self.jobs.replying(question.chat_id, question.user_id) as running:  # a reply waiting is not late
            events = model.reply_events(messages, sampling, running.cancel)
            try:
                while True:
                    # the deadline is checked between events, not at a yield: the caller's time showing an
                    # event counts, and no timeout is left pending in the caller's task
                    wait = None if deadline is None else max(0.0, deadline - loop.time())
                    try:
                        event = await asyncio.wait_for(anext(events), wait)
                    except StopAsyncIteration:
                        break
                    if isinstance(event, str):  # a model can write U+0000 (a byte token): shown and stored alike
                        event = storable(event)
                        out.text += event
                    elif isinstance(event, gateway.Started):
                        started, deadline = time.monotonic(), loop.time() + limit
                    yield event
            except TimeoutError:
                log.warning("generation timeout in chat %s after %.0fs", question.chat_id, time.monotonic() - started)
                out.note = TIMED_OUT_NOTE
                return
            finally:
                await events.aclose()
        out.note = STOPPED_NOTE if running.reason == CANCELLED else ""

    async def finish_reply(self, reply: Message, text: str, status: str) -> None:
        """Store a recovered reply's text and status, once shown (bot.app at start-up)."""
        await self.store.finish_reply(reply, text, status)

    async def recover(self) -> tuple[list[Message], list[Message]]:
        """Replies a crash or restart left "streaming": (finished but maybe not delivered, cut off).

        A reply whose generation finished carries its token count and final text, so it can be delivered
        again (an edit to the same text is harmless); one cut off mid-generation is returned with a note added to
        its text, to be shown in Telegram (in its message, or, when the process died before that message was
        known, in a new one) and then stored as interrupted with `finish_reply`. Until then its row stays
        "streaming": a process that dies again before the note is shown leaves it to the next start.
        """
        finished, cut = await self.store.recover()
        for m in cut:
            m.text = (m.text + "\n\n" if m.text else "") + INTERRUPTED_NOTE  # in memory, until shown
        return finished, cut
