"""Edited messages. The bot answers a message once, when it arrives; an edit of a message it already answered
(or a command it already ran) gets a short note instead of a second reply, and no other handler sees it (bot.app
registers on_edit ahead of every other handler, in group -1)."""

from __future__ import annotations

from telegram import Update
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bot.telegram import texts
from bot.telegram.context import Runtime
from bot.telegram.handlers import guarded


@guarded(rate_limited=True, addressed=True)
async def _note(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    await update.effective_message.reply_text(texts.EDIT_NOTE)


async def on_edit(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say that edits are not answered again (where the message was for the bot); handle nothing else."""
    await _note(update, context)
    raise ApplicationHandlerStop  # the text, command and document handlers would otherwise answer it again
