"""Where updates enter: every update, by long polling or webhook, passes `DocentApplication.process_update`
before any handler sees it, and leaves it with each of its strings storable (bot.safe_text.storable): message
texts and captions, command arguments, user names, chat titles, file names, button data. U+0000 (which
PostgreSQL refuses) and lone surrogates (which no UTF-8 encoder takes, for SQL or for the reply that quotes
them) become U+FFFD here, once, so that no handler or service has to remember to."""

from __future__ import annotations

from telegram import Bot, Update
from telegram.ext import Application

from bot.safe_text import storable_data


def storable_update(update: object, bot: Bot) -> object:
    """`update` with every string storable: the same object when nothing needed it, else a new Update."""
    if not isinstance(update, Update):
        return update
    data = update.to_dict()
    clean = storable_data(data)
    return update if clean == data else Update.de_json(clean, bot)


class DocentApplication(Application):
    """python-telegram-bot's Application, with the boundary rule applied to every update it processes."""

    async def process_update(self, update: object) -> None:
        await super().process_update(storable_update(update, self.bot))
