"""Replying in a conversation: store what was said, build the prompt from SQL history, stream the reply.

SQL is the source of truth. A user message is stored together with its update's key (exactly once); the
reply is stored as a "streaming" row before generation starts and completed afterwards, so a restart
can find replies it cut off and mark them.

`reply()` is the whole turn, as events for the caller to show:

    AlreadyAnswered                          Telegram delivered this update before; nothing else follows
    Waiting(ahead) / Writing / Partial(text) while the reply waits for its place in the batch and is written
    Done(text, rated)                        the final text, stored; `rated`: a complete reply to rate
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import chats as chats_db
from bot.db import messages as messages_db
from bot.db import sources
from bot.db.models import Message
from bot.safe_text import storable
from bot.services import answer
from bot.services.chats import Chats, Origin, record_origin
from bot.services.jobs import CANCELLED, Jobs
from bot.services.knowledge import KnowledgeBase, chat_scope
from bot.services.models import ChatModel, ModelManager, generation_config
from bot.services.reply_text import strip_invented_sources
from bot.telegram.texts import NOT_FROM_DOCUMENTS

if TYPE_CHECKING:
    from lm.engine import GenerationConfig

log = logging.getLogger(__name__)

# what a reply ends with when it did not end by itself (stored with it, as the user saw it)
INTERRUPTED_NOTE = "⚠️ This reply was interrupted by a restart. Please send your message again."
TIMED_OUT_NOTE = "\n\n⏱️ (stopped: the reply took too long)"
STOPPED_NOTE = "\n\n⏹️ (stopped with /cancel)"
FAILED_NOTE = "Sorry, something went wrong while writing the reply."
MODEL_FAILED = "Sorry, my language model could not be loaded. An admin has to look at the logs."
TOO_LONG_MARK = "(the message did not fit the model's context)"  # stored only: the user reads texts.TOO_LONG_FOR_ME


@dataclass
class Incoming:
    """A text message as the services see it (no Telegram types)."""

    origin: Origin
    update_key: str  # what the update is (bot.db.models.ProcessedUpdate), not the Bot API's number for it
    text: str
    telegram_message_id: int | None
    reply_to_telegram_message_id: int | None = None


@dataclass
class Prepared:
    """The reply to prepare: a chat reply from `messages`, or a document answer that is already complete."""

    messages: list[dict]
    answer: answer.Answer | None = None
    note: str = ""  # said under a chat reply: that it does not come from the chat's (forgotten) documents


@dataclass
class AlreadyAnswered:
    """The update was handled before (Telegram delivers an update again after a restart)."""


@dataclass
class Waiting:
    """The reply waits for a place in the batch, `ahead` replies before it."""

    ahead: int


@dataclass
class Writing:
    """The reply has its place and is being written."""


@dataclass
class Partial:
    """The reply so far."""

    text: str


@dataclass
class Done:
    """The final text, stored; `rated`: a complete reply, to be offered 👍/👎; `too_long`: there is no reply
    because the message alone does not fit the model's context (the caller says so in the user's terms)."""

    text: str
    rated: bool
    too_long: bool = False


ReplyEvent = AlreadyAnswered | Waiting | Writing | Partial | Done
# called once the message is stored and before anything slow: shows the reply's first message (`starting_up`:
# the model is still loading) and returns its Telegram message id
OpenReply = Callable[[bool], Awaitable[int | None]]
# the caller's one-reply-in-flight guard, entered once the message and its reply row are stored: `queue(shown)`
# is an async context manager held while the reply is written; a reply that must first wait for an earlier one
# shows that it waits and calls `shown(message_id)`, so that the message saying so is known to a restart
Queue = Callable[[Callable[[int], Awaitable[None]]], AbstractAsyncContextManager[None]]


def no_queue(shown: Callable[[int], Awaitable[None]]) -> AbstractAsyncContextManager[None]:
    """A Queue that never waits."""
    return contextlib.nullcontext()


@dataclass
class _Generated:
    text: str = ""
    note: str = ""  # how it ended, when not by itself


class Assistant:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], models: ModelManager,
                 chats: Chats, knowledge: KnowledgeBase, jobs: Jobs):
        self.settings = settings
        self.sessions = sessions
        self.models = models
        self.chats = chats
        self.knowledge = knowledge
        self.jobs = jobs

    async def reply(self, incoming: Incoming, open_reply: OpenReply, force_documents: bool = False,
                    queue: Queue = no_queue) -> AsyncIterator[ReplyEvent]:
        """Store the user's message once, then, in its turn (`queue`), write, stream and store the reply to it
        (see the module's docstring for the events). `force_documents` (/ask): answer from the chat's documents
        only."""
        turn = await self.accept(incoming)
        if turn is None:
            yield AlreadyAnswered()
            return
        # the reply row was stored with the question, before anything shown or slow (an earlier reply to wait
        # for, the model still loading): a restart at any point after finds it and answers or marks it, in its
        # message once known
        question, reply = turn
        its_turn = False
        try:
            async with queue(lambda shown: self.show_reply_in(reply, shown)):
                its_turn = True
                async for event in self._reply(question, reply, open_reply, force_documents):
                    yield event
        except Exception:
            if not its_turn:  # telling the user it waits failed; a cancelled wait is left to restart recovery
                await self.finish_reply(reply, FAILED_NOTE, "failed")
            raise

    async def _reply(self, question: Message, reply: Message, open_reply: OpenReply,
                     force_documents: bool) -> AsyncIterator[ReplyEvent]:
        """Open, write, stream and store the reply to a stored question (`reply`: its stored row)."""
        try:
            shown_in = await open_reply(not self.models.loaded)
        except BaseException:
            await self.finish_reply(reply, FAILED_NOTE, "failed")
            raise
        if shown_in is not None:
            await self.show_reply_in(reply, shown_in)
        try:
            model = await self.models.current()
        except Exception:
            log.exception("could not load the chat model")
            yield Done(MODEL_FAILED, rated=False)
            await self.finish_reply(reply, MODEL_FAILED, "failed")
            return
        generated, status, too_long = _Generated(), "complete", False
        try:
            prepared = await self.prepare(model, question, reply, force_documents)
            if prepared.answer is not None:
                generated.text = prepared.answer.render()
            else:
                async for event in self._generate(model, prepared.messages, question, generated):
                    yield event
                # a chat reply draws on no document: a source line or web address in it was made up
                generated.text = strip_invented_sources(generated.text)
                if prepared.note and generated.text:
                    generated.text += f"\n\n{prepared.note}"
                if generated.note and not generated.text.strip():
                    status = "failed"  # stopped before any text: nothing to keep as a turn of the conversation
        except Exception as e:
            from lm.engine import ContextOverflow

            status = "failed"
            if isinstance(e, ContextOverflow):  # the user's message alone: the detail is for the log only
                log.info("message %s in chat %s does not fit the context: %s", question.id, question.chat_id, e)
                generated.note, too_long = TOO_LONG_MARK, True
            else:
                log.exception("reply failed in chat %s", question.chat_id)
                generated.note = FAILED_NOTE
        text, note = generated.text.strip(), generated.note
        final = (text + note) if text else (note.strip() or "(no reply)")
        if status != "complete":
            await self.finish_reply(reply, final, status, version_id=model.version_id)
            yield Done(final, rated=False, too_long=too_long)
            return
        # the final text goes to SQL before it is shown, still "streaming" but with its token count: a crash
        # between the two then redelivers it on restart instead of leaving a half-streamed message behind
        await self.finish_reply(reply, final, "streaming", token_count=model.count_tokens(final),
                                version_id=model.version_id)
        yield Done(final, rated=True)
        await self.finish_reply(reply, final, "complete")

    async def _generate(self, model: ChatModel, messages: list[dict], question: Message,
                        out: _Generated) -> AsyncIterator[ReplyEvent]:
        """Stream the model's reply until it ends, times out or its user sends /cancel; the text and how it
        ended are left in `out`."""
        from lm.serve import Queued, Started  # loaded with the model by now

        sampling = await self.sampling_for(question.chat_id)
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
                        out.text += storable(event)
                        if shown := strip_invented_sources(out.text, partial=True):
                            yield Partial(shown)
                    elif isinstance(event, Queued):
                        yield Waiting(event.ahead)
                    elif isinstance(event, Started):
                        started, deadline = time.monotonic(), loop.time() + limit
                        yield Writing()
            except TimeoutError:
                log.warning("generation timeout in chat %s after %.0fs", question.chat_id, time.monotonic() - started)
                out.note = TIMED_OUT_NOTE
                return
            finally:
                await events.aclose()
        out.note = STOPPED_NOTE if running.reason == CANCELLED else ""

    async def accept(self, msg: Incoming) -> tuple[Message, Message] | None:
        """Store the user's message once, with the empty row of the reply to it: (question, reply); None means
        this update was already handled."""
        async with self.sessions() as s:
            await record_origin(s, msg.origin)
            return await messages_db.record_update_and_turn(
                s, msg.update_key, msg.origin.chat_id, msg.origin.user_id, msg.text, msg.telegram_message_id,
                msg.reply_to_telegram_message_id, lease=self.jobs.leases.lease())

    async def sampling_for(self, chat_id: int) -> GenerationConfig:
        """The configured generation settings at the chat's temperature."""
        prefs = await self.chats.prefs_of(chat_id)
        return generation_config(self.settings.model, temperature=prefs.temperature)

    async def turns(self, conversation_id: int, up_to: int | None = None) -> list[Message]:
        """The conversation's stored user and assistant messages that go into a prompt, oldest first (up to the
        message with id `up_to`: a message stored while waiting for its turn is not part of earlier replies)."""
        async with self.sessions() as s:
            rows = await messages_db.history(s, conversation_id, limit=200, up_to=up_to)
        return [m for m in rows if m.role in ("user", "assistant") and m.text]

    async def conversation(self, chat_id: int, conversation_id: int,
                           turns: list[Message] | None = None) -> list[dict]:
        """The system prompt plus this conversation's stored turns (or the `turns` given), oldest first."""
        rows = await self.turns(conversation_id) if turns is None else turns
        prefs = await self.chats.prefs_of(chat_id)
        return [{"role": "system", "content": prefs.system_prompt},
                *({"role": m.role, "content": m.text} for m in rows)]

    async def current_conversation(self, chat_id: int) -> list[dict]:
        """The chat's open conversation as `conversation` gives it (started if it has none)."""
        async with self.sessions() as s:
            conversation = await chats_db.current_conversation(s, chat_id)
        return await self.conversation(chat_id, conversation.id)

    async def prepare(self, model: ChatModel, question: Message, reply: Message,
                      force_documents: bool = False) -> Prepared:
        """The reply to the conversation's last user message, `question`; `reply` is its stored reply row.

        In a chat with documents, a message that retrieval finds them to be about is answered from them
        (answer.answer_question); small talk and general questions there, and every message in a chat without
        documents, get a chat reply. `/ask` (force_documents) always answers from the documents. The documents
        the reply draws on, by its answer or through its prompt, are recorded against the turn (bot.db.sources),
        so that forgetting one of them takes the turn out of later prompts and training data.
        """
        turns = await self.turns(question.conversation_id, up_to=question.id)
        messages = await self.conversation(question.chat_id, question.conversation_id, turns)
        prepared = Prepared(messages)
        scope = chat_scope(question.chat_id)
        if force_documents or await self.knowledge.has_documents(scope):
            earlier = [m["content"] for m in messages[1:-1] if m["role"] == "user"]
            result = await answer.answer_question(messages[-1]["content"], knowledge=self.knowledge, model=model,
                                                  scope=scope, recent_questions=earlier, force=force_documents)
            if result.about_documents or force_documents:
                prepared.answer = result
        elif answer.is_question(question.text) and await self.had_documents(question.chat_id):
            prepared.note = NOT_FROM_DOCUMENTS  # its documents were forgotten: say this is not from them
        read = prepared.answer.evidence if prepared.answer is not None else []  # what the answer was drawn from
        async with self.sessions() as s:
            await sources.record_sources(s, [question.id, reply.id], [e.passage.chunk_id for e in read],
                                         [m.id for m in turns])
        return prepared

    async def had_documents(self, chat_id: int) -> bool:
        """Whether the chat once had documents that were forgotten (answers drawn from them are marked)."""
        async with self.sessions() as s:
            return await messages_db.has_forgotten(s, chat_id)

    async def show_reply_in(self, reply: Message, telegram_message_id: int) -> None:
        """Record the Telegram message that shows the reply (and that a restart edits)."""
        async with self.sessions() as s:
            await messages_db.update_message(s, reply.id, telegram_message_id=telegram_message_id)
        reply.telegram_message_id = telegram_message_id

    async def finish_reply(self, reply: Message, text: str, status: str, token_count: int | None = None,
                           version_id: int | None = None) -> None:
        """Store the reply's text and status (and the model version that wrote it, once known)."""
        async with self.sessions() as s:
            await messages_db.update_message(s, reply.id, text=text, status=status, token_count=token_count,
                                             model_version_id=version_id)

    async def recover(self) -> tuple[list[Message], list[Message]]:
        """Replies a crash or restart left "streaming": (finished but maybe not delivered, cut off).

        A reply whose generation finished carries its token count and final text, so it can be delivered
        again (an edit to the same text is harmless); one cut off mid-generation is returned with a note added to
        its text, to be shown in Telegram (in its message, or, when the process died before that message was
        known, in a new one) and then stored as interrupted with `finish_reply`. Until then its row stays
        "streaming": a process that dies again before the note is shown leaves it to the next start.
        """
        finished, cut = [], []
        async with self.sessions() as s:
            leases = self.jobs.leases
            for m in await messages_db.interrupted_messages(s, leases.lease(), leases.expired_before()):
                if m.token_count is None:
                    m.text = (m.text + "\n\n" if m.text else "") + INTERRUPTED_NOTE  # in memory, until shown
                (finished if m.token_count is not None else cut).append(m)
        return finished, cut
