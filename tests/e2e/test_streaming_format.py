"""A reply shows while it is written as it will show when finished: no raw Markdown ("* **Grilled Chicken:**")
before the final edit. Through the fake Bot API, which parses the HTML as Telegram does."""

from __future__ import annotations

import pytest
from telegram import Bot

from bot.telegram.live_messages import StreamingMessage
from tests.e2e.test_bot import endless_model  # noqa: F401 (a fixture)
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram

pytestmark = pytest.mark.e2e
TOKEN = "123456:SECRET-token-never-logged"
CHAT = 7301
REPLY = ("Here is the menu:\n* **Grilled Chicken:** with *rice* and a `lemon` sauce\n* **Salad:** of the day\n\n"
         "Title\n=====\nEnjoy [the menu](https://example.org/menu)!")


async def test_partial_replies_are_rendered_as_the_final_text_and_never_show_markdown():
    async with FakeTelegram(token=TOKEN) as fake:
        async with Bot(TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url) as bot:
            fake.add_chat(CHAT)
            stream = StreamingMessage(bot, CHAT, min_interval=0.0)
            await stream.start("…")
            words = REPLY.split(" ")
            for n in range(1, len(words) + 1):  # a token at a time, as the model writes
                await stream.update(" ".join(words[:n]), formatted=True)
            await stream.finish(REPLY)
    [message] = fake.messages(CHAT)
    partials, final = message.versions[1:-1], message.versions[-1]
    assert len(partials) >= 10
    assert all(v.parse_mode == "HTML" for v in partials)
    for v in partials:
        assert not set("*`=[") & set(v.text), v.text  # no Markdown marker, no heading underline, no half link
        assert final.text.startswith(v.text.removesuffix("Title")), (v.text, final.text)
    assert "• Grilled Chicken: with rice" in final.text and "=" not in final.text


async def test_the_bot_streams_its_replies_rendered(tmp_path, endless_model):  # noqa: F811
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, endless_model)
        settings.model.max_new_tokens = 60
        settings.telegram.edit_interval_private_s = 0.0
        async with running_bot(settings):
            fake.send_user_message(CHAT, CHAT, "tell me about the menu")
            reply = await fake.wait_for(lambda: final_reply(fake, CHAT), 120)
    partials = [v for v in reply.versions[1:-1] if v.text not in ("…", "Starting up, one moment…")]
    assert partials and all(v.parse_mode == "HTML" for v in partials)
