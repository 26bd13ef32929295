"""/stats: a user's own messages, reply tokens and documents in the current chat, today and in all; for an
admin in a private chat also every chat's totals and the model version in use (never shown in a group, whose
members need not learn about other chats)."""

from __future__ import annotations

from telegram import Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from bot.telegram import texts
from bot.telegram.access import is_admin
from bot.telegram.context import Runtime
from bot.telegram.handlers import guarded


@guarded()
async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE, rt: Runtime) -> None:
    """Show the user's numbers in this chat, and admins every chat's totals."""
    user, chat = update.effective_user, update.effective_chat
    if user is None:
        return  # a channel post: nobody to count for
    admin = is_admin(rt.settings.telegram, user.id)
    private = chat.type == ChatType.PRIVATE
    stats = await rt.services.stats.chat_stats(chat.id, user.id, overview=admin and private)
    await update.effective_message.reply_text(texts.stats_text(stats, admin_in_group=admin and not private))
