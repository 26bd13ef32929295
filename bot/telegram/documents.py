"""Document handlers: uploads are indexed for the chat; /ask, /docs, /forget, /summarize."""

from __future__ import annotations

import asyncio
import logging

from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot.db import chats as chats_db
from bot.db import documents as documents_db
from bot.documents.parse import MAX_NAME_CHARS, DocumentError
from bot.safe_text import shorten_name
from bot.services.compute import in_own_thread
from bot.services.jobs import SHUTDOWN
from bot.services.knowledge import Forgotten, chat_scope
from bot.services.summarize import conversation_text, summarize
from bot.telegram.access import manages_chat
from bot.telegram.chat import answer_text
from bot.telegram.context import Runtime
from bot.telegram.render import StreamingMessage

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand("ask", "answer a question from this chat's documents"),
    BotCommand("docs", "list this chat's documents"),
    BotCommand("forget", "remove a document: /forget NAME"),
    BotCommand("summarize", "summarize a document (reply to it or give its name) or this conversation"),
    BotCommand("cancel", "stop your reply, summary or upload that is still running here"),
]


def _runtime(context: ContextTypes.DEFAULT_TYPE) -> Runtime:
    return context.application.bot_data["runtime"]


class StatusLine:
    """One message that shows progress, edited at most once a second from a background task."""

    def __init__(self, message, interval: float = 1.0):
        self.message, self.interval = message, interval
        self.text = message.text
        self._latest = self.text
        self._task: asyncio.Task | None = None

    def set(self, text: str) -> None:  # thread-safe enough: a str assignment; the ticker reads it
        self._latest = text

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._edit(self._latest)

    async def _edit(self, text: str) -> None:
        if text == self.text:
            return
        try:
            await self.message.edit_text(text)
            self.text = text
        except TelegramError as e:  # progress is best effort; the final edit retries below
            log.debug("status edit skipped: %s", e)

    def __enter__(self) -> StatusLine:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()

    async def done(self, text: str) -> None:
        self._latest = text
        for _ in range(3):
            try:
                await self.message.edit_text(text)
                return
            except TelegramError as e:
                retry = getattr(e, "retry_after", None)
                if retry is None:
                    await self.message.reply_text(text)
                    return
                await asyncio.sleep(retry.total_seconds() if hasattr(retry, "total_seconds") else float(retry))


async def on_document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Download, parse, chunk, embed and index an uploaded file for this chat."""
    rt = _runtime(context)
    message = update.effective_message
    if not await rt.admit(update, rate_limited=True):
        return
    doc = message.document
    name = shorten_name(doc.file_name or "document", MAX_NAME_CHARS)  # a 5,000-character name fits no message
    limit_mb = rt.settings.documents.max_file_mb
    if doc.file_size and doc.file_size > limit_mb * 2**20:
        await message.reply_text(f"{name} is {doc.file_size / 2**20:.1f} MB; I can index files up to {limit_mb:g} MB.")
        return
    await rt.ensure_chat(update)
    status = StatusLine(await message.reply_text(f"Indexing {name}…"))
    user_id = update.effective_user.id if update.effective_user else None
    async with rt.jobs.track("ingest", message.chat.id, user_id, status.message.message_id, name) as job:
        try:
            data = bytes(await (await doc.get_file()).download_as_bytearray())
        except TelegramError as e:
            await status.done(f"I could not download {name}: {e.message}")
            return
        with status:
            try:
                result = await rt.knowledge.ingest(
                    chat_scope(message.chat.id), data, doc.file_name or name, doc.mime_type, chat_id=message.chat.id,
                    progress=lambda stage, frac: status.set(f"Indexing {name}: {stage} {frac:.0%}"),
                    user_id=user_id, stop=job.check)
            except DocumentError as e:
                await status.done(e.message)
                return
            except InterruptedError:
                await status.done(stopped_text(f"Indexing {name}", job.reason, "send the file again"))
                return
            except Exception:
                log.exception("ingest of %s failed in chat %s", name, message.chat.id)
                await status.done(f"Sorry, indexing {name} failed on my side. Nothing was stored.")
                return
        if result.duplicate and result.document.status != "ready":
            await status.done(f"I am already indexing this file as {result.document.name}; it is not indexed twice.")
            return
        if result.duplicate:
            await status.done(f"I already have this file as {result.document.name}; it was not indexed twice.")
            return
        pages = f"{result.pages} pages, " if result.pages else ""
        await status.done(f"Indexed {result.document.name}: {pages}{result.chunks} chunks. "
                          "Ask me about it, or /summarize it.")


def stopped_text(what: str, reason: str | None, again: str) -> str:
    """The status a stopped job ends on: by its user's /cancel, or because the bot is stopping."""
    if reason == SHUTDOWN:
        return f"⚠️ {what} was stopped: I am restarting. Nothing was stored; please {again} in a minute."
    return f"{what} was cancelled. Nothing was stored."


def interrupted_text(job) -> str:
    """The status of a job an earlier run of the bot never finished (it crashed or was killed)."""
    if job.kind == "ingest":
        return f"⚠️ Indexing {job.label} was interrupted by a restart. Nothing was stored; please send the file again."
    return f"⚠️ The summary of {job.label} was interrupted by a restart. Send /summarize again for it."


def _running_name(job) -> str:
    """How /cancel names what it stops: "your reply", "the summary of NAME", "indexing NAME"."""
    return {"summary": "the summary of ", "ingest": "indexing "}.get(job.kind, "") + job.label


async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Stop the reply, summaries and uploads this user has running in this chat."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    user = update.effective_user
    stopped = rt.jobs.cancel(update.effective_chat.id, user.id if user else None)
    if not stopped:
        await update.effective_message.reply_text("Nothing of yours is running here: no reply, summary or upload.")
        return
    names = ", ".join(_running_name(j) for j in stopped)
    await update.effective_message.reply_text(f"Stopping {names}…")


async def ask(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a question from this chat's documents only."""
    rt = _runtime(context)
    message = update.effective_message
    if not await rt.admit(update, rate_limited=True):
        return
    question = " ".join(context.args or []).strip()
    if not question:
        await message.reply_text("Usage: /ask YOUR QUESTION")
        return
    await answer_text(rt, update, context, question, force_documents=True)


async def list_docs(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """List the documents indexed for this chat."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    docs = await rt.knowledge.documents(chat_scope(update.effective_chat.id))
    if not docs:
        await update.effective_message.reply_text("No documents yet. Send me a PDF, DOCX, HTML, Markdown or text file.")
        return
    lines = [f"{d.id}. {d.name} – {(str(d.pages) + ' pages, ') if d.pages else ''}{d.chunk_count} chunks" for d in docs]
    await update.effective_message.reply_text("Documents in this chat:\n" + "\n".join(lines))


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove a document from this chat with every answer drawn from it, for its uploader or the chat's admins."""
    rt = _runtime(context)
    if not await rt.admit(update):
        return
    target = " ".join(context.args or []).strip()
    if not target:
        await update.effective_message.reply_text("Usage: /forget NAME (or the number shown by /docs)")
        return
    user = update.effective_user
    try:
        removed = await rt.knowledge.forget(
            chat_scope(update.effective_chat.id), target, requester_id=user.id if user else None,
            any_document=await manages_chat(context.bot, rt.settings.telegram, update))
    except ValueError as e:  # an ambiguous name, or not theirs to forget: the message says which
        await update.effective_message.reply_text(str(e))
        return
    await update.effective_message.reply_text(
        forgot_text(removed) if removed else f"No document called {target!r} here. See /docs.")


def forgot_text(removed: Forgotten) -> str:
    """What /forget removed: the document's parts and the answers that drew on it."""
    doc, n = removed.document, removed.answers
    parts = f"{doc.chunk_count} part{'s' * (doc.chunk_count != 1)}"
    if not n:
        return f"Forgot {doc.name}: {parts}."
    answers = "1 answer that used it is" if n == 1 else f"{n} answers that used it are"
    return f"Forgot {doc.name}: {parts}, and {answers} no longer in this chat's history or training data."


async def summarize_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Summarize a whole document (reply to it or name it), or else the current conversation."""
    rt = _runtime(context)
    message = update.effective_message
    if not await rt.admit(update, rate_limited=True):
        return
    await rt.ensure_chat(update)
    scope = chat_scope(message.chat.id)
    target = " ".join(context.args or []).strip()
    replied = message.reply_to_message
    if not target and replied is not None and replied.document is not None:
        target = replied.document.file_name or ""
    if target:
        pieces, label = await _document_pieces(rt, scope, target)
        if pieces is None:
            await message.reply_text(label)
            return
        title = f"`{label}`" if "`" not in label else label  # a file name as code: its _ and * stay literal
    else:
        async with rt.sessions() as s:
            conversation = await chats_db.current_conversation(s, message.chat.id)
        turns = await rt.assistant.conversation(message.chat.id, conversation.id)
        pieces, label = conversation_text(turns), "this conversation"
        title = label
        if not pieces:
            await message.reply_text("There is nothing to summarize yet: this conversation is empty.")
            return
    status = StatusLine(await message.reply_text(f"Summarizing {label}…"))
    user_id = update.effective_user.id if update.effective_user else None
    async with rt.jobs.track("summary", message.chat.id, user_id, status.message.message_id, label) as job:
        with status:
            try:
                summary = await in_own_thread(
                    lambda: summarize(pieces, rt.knowledge.encoder, conversation=not target, cancel=job.cancel,
                                      progress=lambda i, n: status.set(f"Summarizing {label}: part {i} of {n}")))
            except InterruptedError:
                await status.done(stopped_text(f"The summary of {label}", job.reason, "send /summarize again"))
                return
            except Exception:
                log.exception("summary failed in chat %s", message.chat.id)
                await status.done("Sorry, the summary failed on my side.")
                return
            finally:
                job.cancel.set()  # the handler was cancelled: the worker thread stops at its next window
        await _send_summary(context, status, label, title, summary)


async def _send_summary(context: ContextTypes.DEFAULT_TYPE, status: StatusLine, label: str, title: str,
                        summary) -> None:
    """The finished summary, in place of its status line."""
    if not summary.sentences:
        await status.done(f"There is nothing I could summarize in {label}.")
        return
    # the final text is rendered like every reply (Markdown -> Telegram HTML, split at the limit), in place
    # of the status line; only the status line showed progress
    stream = StreamingMessage.resume(context.bot, status.message.chat_id, status.message.message_id)
    await stream.finish(f"**Summary of {title}:**\n\n{summary.text}")


async def _document_pieces(rt: Runtime, scope: str, target: str) -> tuple[list[str] | None, str]:
    docs = await rt.knowledge.documents(scope)
    matches = [d for d in docs if str(d.id) == target or d.name == target] or \
              [d for d in docs if target.lower() in d.name.lower()]
    if len(matches) != 1:
        return None, (f"No document called {target!r} here. See /docs." if not matches
                      else f"{len(matches)} documents match {target!r}; give the number from /docs.")
    async with rt.sessions() as s:
        chunks = [c for c in await documents_db.chunks_for_scope(s, scope) if c.document_id == matches[0].id]
    return [c.text for c in chunks], matches[0].name


def register(app: Application, runtime: Runtime) -> None:
    app.add_handler(MessageHandler(filters.Document.ALL, on_document))
    app.add_handler(CommandHandler("ask", ask))
    app.add_handler(CommandHandler("docs", list_docs))
    app.add_handler(CommandHandler("forget", forget))
    app.add_handler(CommandHandler("summarize", summarize_command))
    app.add_handler(CommandHandler("cancel", cancel_command))
    app.bot_data.setdefault("commands", []).extend(COMMANDS)
