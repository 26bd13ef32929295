"""Replies to what the bot cannot handle: commands it does not know, and photos, voice messages, stickers
and other non-text messages. Each gets a short reply saying what the bot cannot do yet and what it can, so
that nobody wonders whether it is alive. In groups, only when addressed, as for text. bot.app registers these
last of all handlers: only what no other handler took comes here (unknown button presses go to chat.on_button,
which refuses them)."""

from __future__ import annotations

from telegram import Message, Update
from telegram.ext import ContextTypes, filters

from bot.telegram import texts
from bot.telegram.context import Runtime
from bot.telegram.handlers import guarded

UNSUPPORTED = (filters.PHOTO | filters.VOICE | filters.AUDIO | filters.VIDEO | filters.VIDEO_NOTE
               | filters.ANIMATION | filters.Sticker.ALL | filters.LOCATION | filters.CONTACT | filters.POLL)


def what_it_is(message: Message) -> str:
    """The kind of a non-text message, as a key of texts.CANNOT (animations also carry a document: checked first)."""
    return next((kind for kind in texts.CANNOT if getattr(message, kind, None)), "")


@guarded(addressed=True)
async def on_unsupported(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Say what the bot cannot do with a photo, voice message, sticker and the like, and what it can."""
    await update.effective_message.reply_text(texts.unsupported_reply(what_it_is(update.effective_message)))


@guarded(addressed=True)
async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Point a command the bot does not know to /help."""
    await update.effective_message.reply_text(texts.unknown_command_reply(update.effective_message.text or ""))

