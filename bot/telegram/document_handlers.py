"""Document handlers: uploads are indexed for the chat; /ask, /docs, /forget, /summarize, /cancel."""

from __future__ import annotations

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot.documents.parse import MAX_NAME_CHARS, clean_name
from bot.safe_text import shorten_name
from bot.services.knowledge import chat_scope
from bot.services.summaries import SummaryOutcome
from bot.services.uploads import DownloadFailed, ForgetOutcome, UploadOutcome
from bot.telegram import texts
from bot.telegram.access import manages_chat
from bot.telegram.chat_handlers import answer_text
from bot.telegram.context import Runtime, origin_of
from bot.telegram.handlers import guarded
from bot.telegram.live_messages import StatusLine, StreamingMessage

CANCEL_WAIT_S = 60.0  # how long /cancel waits for what it stopped to end before it says what it stopped


class UploadStatus:
    """The status line of an upload being indexed (bot.services.uploads.UploadView), in reply to the upload."""

    def __init__(self, upload, name: str):
        self.upload, self.name, self.line = upload, name, None  # the upload's message; the status line, once started

    async def start(self) -> int:
        self.line = StatusLine(await self.upload.reply_text(texts.indexing(self.name)))
        self.line.start()
        return self.line.message.message_id

    def progress(self, stage: str, fraction: float) -> None:
        if self.line is not None:
            self.line.set(texts.indexing_progress(self.name, stage, fraction))

    def stop(self) -> None:
        if self.line is not None:
            self.line.stop()

    async def finish(self, outcome: UploadOutcome) -> None:
        self.stop()
        await self.line.done(texts.upload_outcome(self.name, outcome))


class SummaryStatus:
    """The status line of /summarize, then the summary in its place (bot.services.summaries.SummaryView)."""

    def __init__(self, command):
        self.command, self.line = command, None  # the /summarize message; the status line, once started

    async def start(self, label: str) -> int:
        self.line, self.label = StatusLine(await self.command.reply_text(texts.summarizing(label))), label
        self.line.start()
        return self.line.message.message_id

    def progress(self, part: int, parts: int) -> None:
        self.line.set(texts.summarizing_progress(self.label, part, parts))

    def stop(self) -> None:
        if self.line is not None:
            self.line.stop()

    async def finish(self, outcome: SummaryOutcome) -> None:
        if self.line is None:  # nothing was started: there was nothing to summarize
            await self.command.reply_text(texts.summary_problem(outcome))
            return
        self.stop()
        if outcome.status != "done" or not outcome.summary.sentences:
            await self.line.done(texts.summary_problem(outcome))
            return
        # the final text is rendered like every reply (Markdown -> Telegram HTML, split at the limit), in place
        # of the status line; only the status line showed progress
        message = self.line.message
        await StreamingMessage.resume(message.get_bot(), message.chat_id, message.message_id) \
            .finish(texts.summary_text(outcome))


class ForgetStatus:
    """/forget's reply: at once when it is done; for an upload still being indexed, first that it is being stopped,
    then (in the same message) how that ended (bot.services.uploads.ForgetOutcome)."""

    def __init__(self, command):
        self.command, self.message = command, None  # the /forget message; the reply, once sent

    async def stopping(self, name: str) -> None:
        self.message = await self.command.reply_text(texts.stopping_upload(name))

    async def finish(self, outcome: ForgetOutcome) -> None:
        if self.message is None:
            await self.command.reply_text(texts.forget_outcome(outcome))
        else:
            await StatusLine(self.message).done(texts.forget_outcome(outcome))


@guarded(rate_limited=True)
async def on_document(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Download, parse, chunk, embed and index an uploaded file for this chat."""
    message = update.effective_message
    doc = message.document
    name = shorten_name(doc.file_name or "document", MAX_NAME_CHARS)  # a 5,000-character name fits no message
    limit_mb = rt.settings.documents.max_file_mb
    if doc.file_size and doc.file_size > limit_mb * 2**20:
        await message.reply_text(texts.too_big(name, doc.file_size, limit_mb))
        return

    async def download() -> bytes:
        try:
            return bytes(await (await doc.get_file()).download_as_bytearray())
        except TelegramError as e:
            raise DownloadFailed(e.message) from e

    status = UploadStatus(message, name)
    try:
        await rt.services.uploads.index(origin_of(update), name, doc.file_name or name, doc.mime_type, download,
                                        status)
    finally:
        status.stop()


@guarded()
async def cancel_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Stop the reply, summaries and uploads this user has running in this chat."""
    chat_id, user_id = update.effective_chat.id, update.effective_user.id if update.effective_user else None
    running = rt.services.jobs.stoppable(chat_id, user_id)
    if not running:
        await update.effective_message.reply_text(texts.NOTHING_TO_CANCEL)
        return
    note = await update.effective_message.reply_text(texts.stopping(running))  # before the jobs say they stopped
    stopped = rt.services.jobs.cancel(chat_id, user_id)
    still_running = await rt.services.jobs.wait_ended(stopped, CANCEL_WAIT_S)
    await note.edit_text(texts.stopped_jobs(stopped, still_running))  # "Stopping…" must not stay on screen


@guarded(rate_limited=True)
async def ask(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Answer a question from this chat's documents only."""
    question = " ".join(context.args or []).strip()
    if not question:
        await update.effective_message.reply_text(texts.ASK_USAGE)
        return
    await answer_text(rt, update, context, question, force_documents=True)


@guarded()
async def list_docs(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """List the documents indexed for this chat."""
    docs = await rt.services.knowledge.documents(chat_scope(update.effective_chat.id))
    await update.effective_message.reply_text(texts.document_list(docs) if docs else texts.NO_DOCUMENTS)


@guarded()
async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Remove a document from this chat with every answer drawn from it, or stop its indexing, for its uploader or
    the chat's admins."""
    target = " ".join(context.args or []).strip()
    if not target:
        await update.effective_message.reply_text(texts.FORGET_USAGE)
        return
    view = ForgetStatus(update.effective_message)
    outcome = await rt.services.uploads.forget(
        origin_of(update), target, any_document=await manages_chat(context.bot, rt.settings.telegram, update),
        stopping=view.stopping)
    await view.finish(outcome)


@guarded(rate_limited=True)
async def summarize_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Summarize a whole document (reply to it or name it), or else the current conversation."""
    message = update.effective_message
    target = " ".join(context.args or []).strip()
    replied = message.reply_to_message
    if not target and replied is not None and replied.document is not None:
        target = clean_name(replied.document.file_name or "")  # the name it was stored under (shortened, ...)
    view = SummaryStatus(message)
    try:
        await rt.services.summaries.summarize(origin_of(update), target, view)
    finally:
        view.stop()

