"""Edited messages. The bot answers a message once, when it arrives; an edit of a message it already answered
(or a command it already ran) gets a short note instead of a second reply, and no other handler sees it."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, ContextTypes, MessageHandler, filters

from bot.telegram import texts
from bot.telegram.access import addressed_to_bot
from bot.telegram.context import runtime


async def on_edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say that edits are not answered again (where the message was for the bot); handle nothing else."""
    rt = runtime(context)
    message = update.effective_message
    if message is not None and addressed_to_bot(message, context.bot.id, context.bot.username) \
            and await rt.admit(update, rate_limited=True):
        await message.reply_text(texts.EDIT_NOTE)
    raise ApplicationHandlerStop  # the text, command and document handlers would otherwise answer it again


def register(app: Application) -> None:
    """Ahead of every other handler (group -1), which then only ever see new messages."""
    app.add_handler(MessageHandler(filters.UpdateType.EDITED, on_edit), group=-1)
