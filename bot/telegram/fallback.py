"""Replies to what the bot cannot handle: commands it does not know, and photos, voice messages, stickers
and other non-text messages. Each gets a short reply saying what the bot cannot do yet and what it can, so
that nobody wonders whether it is alive. In groups, only when addressed, as for text."""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

from bot.telegram.access import addressed_to_bot
from bot.telegram.context import Runtime

CAN_DO = "I read text, and PDF, DOCX, HTML, Markdown or text files sent as a document. See /help."
CANNOT = {  # what the message is -> what the bot cannot do with it
    "photo": "I cannot see images yet.",
    "voice": "I cannot listen to voice messages yet.",
    "audio": "I cannot listen to audio yet.",
    "video": "I cannot watch videos yet.",
    "video_note": "I cannot watch video messages yet.",
    "animation": "I cannot watch GIFs yet.",
    "sticker": "I cannot read stickers.",
    "location": "I cannot use locations.",
    "contact": "I cannot use contacts.",
    "poll": "I cannot take part in polls.",
}
UNSUPPORTED = (filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO | filters.VIDEO_NOTE
               | filters.ANIMATION | filters.Sticker.ALL | filters.LOCATION | filters.CONTACT | filters.POLL)


def what_it_is(message: Message) -> str:
    """The kind of a non-text message, as a key of CANNOT (animations also carry a document: checked first)."""
    return next((kind for kind in CANNOT if getattr(message, kind, None)), "")


def unsupported_reply(message: Message) -> str:
    return f"{CANNOT.get(what_it_is(message), 'I cannot read this kind of message.')} {CAN_DO}"


def unknown_command_reply(text: str) -> str:
    command = (text.split() or ["/"])[0].split("@", 1)[0]
    return f"I do not know the command {command}. /help lists the ones I have."


async def _addressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    rt: Runtime = context.application.bot_data["runtime"]
    message = update.effective_message
    if message is None or not addressed_to_bot(message, context.bot.id, context.bot.username):
        return False
    return await rt.admit(update)


async def on_unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot cannot do with a photo, voice message, sticker and the like, and what it can."""
    if await _addressed(update, context):
        await update.effective_message.reply_text(unsupported_reply(update.effective_message))


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Point a command the bot does not know to /help."""
    if await _addressed(update, context):
        await update.effective_message.reply_text(unknown_command_reply(update.effective_message.text or ""))


def register(app: Application) -> None:
    """Last of all handlers: only what no other handler took comes here."""
    app.add_handler(MessageHandler(UNSUPPORTED, on_unsupported))
    app.add_handler(MessageHandler(filters.COMMAND, on_unknown_command))
