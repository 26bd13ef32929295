"""/stats: a user's own messages, reply tokens and documents in the current chat, today and in all; for an
admin in a private chat also every chat's totals and the model version in use (never shown in a group, whose
members need not learn about other chats)."""

from __future__ import annotations

from telegram import Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from bot.services.stats import Overview, Stats, chat_stats
from bot.telegram.access import is_admin
from bot.telegram.context import Runtime

MAX_CHATS_SHOWN = 20  # the rest are summed up in one line: a message holds 4096 characters


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _counts(messages: int, tokens: int, documents: int) -> str:
    return f"{_n(messages, 'message')}, {_n(tokens, 'reply token')}, {_n(documents, 'document')}"


def _overview(o: Overview) -> list[str]:
    model = (f"version #{o.version.id} ({o.version.name}), trained from {o.version.base}" if o.version
             else f"the configured model {o.configured_model} (no trained version is active)")
    total = [sum(getattr(c, f) for c in o.chats) for f in ("messages", "tokens", "documents")]
    lines = ["", f"Model in use: {model}", f"All chats ({len(o.chats)}): {_counts(*total)}"]
    for c in o.chats[:MAX_CHATS_SHOWN]:
        lines.append(f"• {c.name or 'untitled'} ({c.type} {c.chat_id}): "
                     f"{_counts(c.messages, c.tokens, c.documents)}, {_n(c.users, 'user')}")
    if len(o.chats) > MAX_CHATS_SHOWN:
        lines.append(f"… and {_n(len(o.chats) - MAX_CHATS_SHOWN, 'more chat')}")
    return lines


def render(stats: Stats, admin_in_group: bool = False) -> str:
    """The /stats reply."""
    today, total = stats.user.since, stats.user.total
    lines = ["📊 Your use of this chat",
             f"Today (UTC): {_counts(today.messages, today.tokens, today.documents)}",
             f"All time: {_counts(total.messages, total.tokens, total.documents)}",
             "Reply tokens: the length of my replies to your messages, in model tokens. Documents: the ones you "
             "uploaded that are still here."]
    if stats.overview is not None:
        lines += _overview(stats.overview)
    elif admin_in_group:
        lines.append("\nSend /stats in a private chat with me for every chat's totals.")
    return "\n".join(lines)


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the user's numbers in this chat, and admins every chat's totals."""
    rt: Runtime = context.application.bot_data["runtime"]
    if not await rt.admit(update):
        return
    user, chat = update.effective_user, update.effective_chat
    if user is None:
        return  # a channel post: nobody to count for
    admin = is_admin(rt.settings.telegram, user.id)
    private = chat.type == ChatType.PRIVATE
    stats = await chat_stats(rt.sessions, rt.settings.model.name, chat.id, user.id, overview=admin and private)
    await update.effective_message.reply_text(render(stats, admin_in_group=admin and not private))
