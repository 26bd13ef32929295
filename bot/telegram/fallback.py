"""Replies to what the bot cannot handle: commands it does not know, and photos, voice messages, stickers
and other non-text messages. Each gets a short reply saying what the bot cannot do yet and what it can, so
that nobody wonders whether it is alive. In groups, only when addressed, as for text."""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

from bot.telegram import texts
from bot.telegram.access import addressed_to_bot
from bot.telegram.context import runtime

UNSUPPORTED = (filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO | filters.VIDEO_NOTE
               | filters.ANIMATION | filters.Sticker.ALL | filters.LOCATION | filters.CONTACT | filters.POLL)


def what_it_is(message: Message) -> str:
    """The kind of a non-text message, as a key of texts.CANNOT (animations also carry a document: checked first)."""
    return next((kind for kind in texts.CANNOT if getattr(message, kind, None)), "")


async def _addressed(update: Update, context: ContextTypes.DEFAULT_TYPE) -> bool:
    rt = runtime(context)
    message = update.effective_message
    if message is None or not addressed_to_bot(message, context.bot.id, context.bot.username):
        return False
    return await rt.admit(update)


async def on_unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what the bot cannot do with a photo, voice message, sticker and the like, and what it can."""
    if await _addressed(update, context):
        await update.effective_message.reply_text(texts.unsupported_reply(what_it_is(update.effective_message)))


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Point a command the bot does not know to /help."""
    if await _addressed(update, context):
        await update.effective_message.reply_text(texts.unknown_command_reply(update.effective_message.text or ""))


def register(app: Application) -> None:
    """Last of all handlers: only what no other handler took comes here."""
    app.add_handler(MessageHandler(UNSUPPORTED, on_unsupported))
    app.add_handler(MessageHandler(filters.COMMAND, on_unknown_command))
