"""A message under the character limit that is still too long for the model's context (emoji, combining marks:
many tokens each) is answered in the user's terms; the token counts go to the log only."""

from __future__ import annotations

import logging

import pytest

from bot.telegram.texts import TOO_LONG_FOR_ME
from tests.support.bot_harness import bot_settings, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER = 5101


@pytest.mark.parametrize("message", ["😀" * 2100, "e\u0301" * 1500])
async def test_a_message_too_long_for_the_context_is_told_so_without_token_jargon(tmp_path, message, caplog):
    caplog.set_level(logging.INFO, logger="bot.services.assistant")
    model = write_tiny_gguf(tmp_path / "tiny.gguf").path
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, message)
            reply = await fake.wait_for(lambda: next((m for m in fake.messages(USER)
                                                      if m.text not in ("…", "Starting up, one moment…")), None), 60)
            await fake.wait_for(lambda: fake.messages(USER)[0].text == TOO_LONG_FOR_ME, 30)
    assert "token" not in reply.text
    assert "does not fit the context" in caplog.text and "tokens" in caplog.text  # the detail, for whoever looks
