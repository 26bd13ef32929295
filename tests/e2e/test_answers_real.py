"""Document answers written by the real Qwen2.5-Coder-0.5B (the default candidate), over HTTP to the fake Bot API:
a chat with a PDF answers a "what must I do" question in a sentence with its source and the sentence quoted, and
answers small talk and a general question with no source line and no web address."""

from __future__ import annotations

import re

import pytest

from bot.config import env_cache_dir
from lm import hub
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.make_docs import make_pdf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
USER = 4343
POLICY = make_pdf([
    "Badge policy\nEvery employee receives a photo badge on the first day. The badge opens the main entrance\n"
    "and the car park barrier.",
    "Lost badges\nIf you lose your badge, report the loss to Security on the same day.\nSecurity blocks the old "
    "badge at once. A replacement badge costs 15 euros and is issued\nby the front desk within two working days.",
])


@pytest.fixture(scope="module")
def qwen() -> str:
    return str(hub.pull("qwen2.5-coder-0.5b", env_cache_dir()))


async def test_a_chat_with_a_pdf_answers_what_to_do_with_its_source_and_chats_without_one(tmp_path, qwen):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, qwen)
        settings.cache_dir = env_cache_dir()  # the converted-weights cache of the other tests
        settings.model.weights = "int4"  # the default format, as users run it
        settings.model.context_tokens = 2048
        settings.model.max_new_tokens = 60
        settings.model.system_prompt = "You are a helpful assistant."
        async with running_bot(settings):
            fake.send_user_document(USER, USER, "badges.pdf", POLICY, "application/pdf")
            await fake.wait_for(lambda: "Indexed badges.pdf" in (fake.last_text(USER) or ""), timeout=120)
            fake.send_user_message(USER, USER, "What must I do if I lose my badge?")
            answer = await fake.wait_for(lambda: final_reply(fake, USER), timeout=180)
            fake.send_user_message(USER, USER, "Hi! How are you today?")
            hello = await fake.wait_for(lambda: final_reply(fake, USER, after=1), timeout=180)
            fake.send_user_message(USER, USER, "What is the capital of Italy?")
            general = await fake.wait_for(lambda: final_reply(fake, USER, after=2), timeout=180)
    said, _, cited = answer.text.partition("\n\nSource: badges.pdf")
    assert cited, answer.text  # the answer, then its source
    assert re.search(r"\breport\b", said, re.I) and "Security" in said, answer.text  # what to do, in the answer
    assert len(said.split()) >= 4 and not said.startswith("I could not find"), answer.text  # a sentence
    assert "“" in cited and "Security" in cited.split("“", 1)[1], answer.text  # the sentence it rests on, quoted
    for reply in (hello, general):
        assert "Source" not in reply.text and "badges.pdf" not in reply.text, reply.text
        assert not re.search(r"https?://|www\.", reply.text), reply.text
        assert len(reply.text) > 2
