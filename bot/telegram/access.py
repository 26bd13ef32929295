"""Who may talk to the bot, how often, whether a group message is addressed to it, and who manages a chat."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from telegram import Bot, Message, Update
from telegram.constants import ChatMemberStatus, ChatType, MessageEntityType
from telegram.error import TelegramError

from bot.config import TelegramSettings

log = logging.getLogger(__name__)


@dataclass
class RateLimiter:
    """A sliding one-minute window per user."""

    per_minute: int
    _hits: dict[int, deque] = field(default_factory=lambda: defaultdict(deque))

    def allow(self, user_id: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        hits = self._hits[user_id]
        while hits and now - hits[0] > 60.0:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return False
        hits.append(now)
        return True


def is_admin(cfg: TelegramSettings, user_id: int | None) -> bool:
    return user_id is not None and user_id in cfg.admins


def is_allowed(cfg: TelegramSettings, update: Update) -> bool:
    """The allow-lists: empty means everyone; admins always pass."""
    user = update.effective_user
    chat = update.effective_chat
    if user is not None and is_admin(cfg, user.id):
        return True
    if cfg.allowed_users and (user is None or user.id not in cfg.allowed_users):
        return False
    if cfg.allowed_chats and (chat is None or chat.id not in cfg.allowed_chats):
        # a private chat's id is the user's id, so an allowed user may always talk privately
        return chat is not None and chat.type == ChatType.PRIVATE and bool(cfg.allowed_users)
    return True


async def manages_chat(bot: Bot, cfg: TelegramSettings, update: Update) -> bool:
    """Whether the sender may act on everything in this chat: in their own private chat, as one of the bot's
    admins, or as the group's owner or an administrator (asked of Telegram; an anonymous admin posts as the
    group itself)."""
    user, chat, message = update.effective_user, update.effective_chat, update.effective_message
    if chat is None:
        return False
    if chat.type == ChatType.PRIVATE or (user is not None and is_admin(cfg, user.id)):
        return True
    if message is not None and message.sender_chat is not None and message.sender_chat.id == chat.id:
        return True
    if user is None:
        return False
    try:
        member = await bot.get_chat_member(chat.id, user.id)
    except TelegramError as e:  # unknown counts as "no": the uploader may still act on their own things
        log.warning("could not look up user %s in chat %s: %s", user.id, chat.id, e)
        return False
    return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


def addressed_to_bot(message: Message, bot_id: int, bot_username: str) -> bool:
    """In private chats everything is; in groups only mentions of the bot and replies to it."""
    if message.chat.type == ChatType.PRIVATE:
        return True
    if message.reply_to_message and message.reply_to_message.from_user and \
            message.reply_to_message.from_user.id == bot_id:
        return True
    mention = f"@{bot_username}".lower()
    mentions = [*message.parse_entities([MessageEntityType.MENTION]).values(),
                *message.parse_caption_entities([MessageEntityType.MENTION]).values()]  # a photo's caption
    said = message.text or message.caption or ""
    return any(text.lower() == mention for text in mentions) or mention in said.lower()


def strip_mention(text: str, bot_username: str) -> str:
    mention = f"@{bot_username}"
    idx = text.lower().find(mention.lower())
    if idx < 0:
        return text.strip()
    return (text[:idx] + text[idx + len(mention):]).strip()
