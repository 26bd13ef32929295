"""Webhook mode's request handler: a body that is not a Telegram update is refused with HTTP 400 and one
warning line.

python-telegram-bot's handler decodes and parses the body outside its error handling: a body that is not
UTF-8 or not JSON became HTTP 500 with tracebacks, and JSON that is not an update was logged as critical with
its traceback. Anyone who can reach the port can send such a request, so it is the caller's mistake (400), not
ours. The secret token and the content type are still checked first, by python-telegram-bot (403).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

import tornado.web
from telegram import Update
from telegram.ext import ExtBot
from telegram.ext._utils import webhookhandler

log = logging.getLogger(__name__)


def parse_update_body(body: bytes) -> dict:
    """The update a webhook request carries, as a JSON object; ValueError (UnicodeDecodeError and
    json.JSONDecodeError are ValueErrors) when the body is not UTF-8 JSON holding an object with an update_id."""
    data = json.loads(body.decode("utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise ValueError("not a JSON object with an update_id")
    return data


class StrictTelegramHandler(webhookhandler.TelegramHandler):
    """TelegramHandler whose post() answers 400 to a body that is not an update, instead of 500."""

    async def post(self) -> None:
        self._validate_post()  # the content type and the secret token (403)
        try:
            update = Update.de_json(parse_update_body(self.request.body), self.bot)
        except (ValueError, TypeError, KeyError) as e:
            log.warning("webhook: refused a request from %s that is not a Telegram update (%s: %.120s)",
                        self.request.remote_ip, type(e).__name__, e)
            raise tornado.web.HTTPError(HTTPStatus.BAD_REQUEST, reason="Not a Telegram update") from None
        self.set_status(HTTPStatus.OK)
        if isinstance(self.bot, ExtBot):
            self.bot.insert_callback_data(update)
        await self.update_queue.put(update)


def use_strict_webhook_handler() -> None:
    """Make python-telegram-bot's webhook server route requests to StrictTelegramHandler. Its WebhookAppClass
    names the handler class through this module global when it is built (in run_webhook); there is no public
    way to pass one. tests/e2e/test_webhook.py fails if a new version stops using it."""
    webhookhandler.TelegramHandler = StrictTelegramHandler
