"""Where updates enter: every update, by long polling or webhook, passes `DocentApplication.process_update`
before any handler sees it.

Two rules apply there, once, so that no handler or service has to remember them:
- every string of an update is made storable (bot.safe_text.storable): message texts and captions, command
  arguments, user names, chat titles, file names, button data. U+0000 (which PostgreSQL refuses) and lone
  surrogates (which no UTF-8 encoder takes, for SQL or for the reply that quotes them) become U+FFFD;
- an update is handled once, across restarts and replicas, whatever the Bot API's numbering does: its key
  (`update_key`: what the update is, not its number) is claimed in SQL first, and a key claimed before means a
  redelivery, which is dropped. A plain text message is the exception: the assistant claims its key in the same
  transaction as the question and the row of its reply (bot.db.message_queries.record_update_and_turn), so a crash in
  between leaves it unclaimed, to be answered when Telegram delivers it again."""

from __future__ import annotations

import hashlib
import json
import logging

from telegram import Bot, Message, Update
from telegram.ext import Application

from bot.safe_text import storable_data

log = logging.getLogger(__name__)

MESSAGE_KINDS = ("message", "edited_message", "channel_post", "edited_channel_post", "business_message",
                 "edited_business_message")


def storable_update(update: object, bot: Bot) -> object:
    """`update` with every string storable: the same object when nothing needed it, else a new Update."""
    if not isinstance(update, Update):
        return update
    data = update.to_dict()
    clean = storable_data(data)
    return update if clean == data else Update.de_json(clean, bot)


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def update_key(update: Update) -> str:
    """What an update is, independent of the number the Bot API gave it: a message's kind, chat and message id
    (an edit adds a digest of the edited message, as one message may be edited many times), a button press's
    query id, or else a digest of the update's content."""
    for kind in MESSAGE_KINDS:
        message: Message | None = getattr(update, kind, None)
        if message is not None:
            edit = f":{_digest(message.to_dict())[:24]}" if kind.startswith("edited_") else ""
            return f"{kind}:{message.chat.id}:{message.message_id}{edit}"
    if update.callback_query is not None:
        return f"callback_query:{update.callback_query.id}"
    content = update.to_dict()
    content.pop("update_id", None)
    return f"sha256:{_digest(content)}"


def claimed_by_its_handler(update: Update) -> bool:
    """A plain text message (not a command): the assistant claims it with its question (see the module's note)."""
    message = update.message
    return message is not None and bool(message.text) and not message.text.startswith("/")


class DocentApplication(Application):
    """python-telegram-bot's Application, with the boundary rules applied to every update it processes."""

    async def process_update(self, update: object) -> None:
        update = storable_update(update, self.bot)
        if isinstance(update, Update) and not claimed_by_its_handler(update):
            services = self.bot_data.get("services")
            chat = update.effective_chat
            if services is not None and not await services.chats.claim_update(
                    update_key(update), update.update_id, chat.id if chat else None):
                log.info("update %s was handled before (%s); not handled again", update.update_id, update_key(update))
                return
        await super().process_update(update)
