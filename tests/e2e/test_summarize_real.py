"""/summarize written by the real Qwen2.5-Coder-0.5B through Telegram (the fake Bot API): a three-page PDF's
summary draws on its first and its last page and shows no page header or fragment; the conversation's
summary says what was asked and answered, in sentences, not as a list of turns."""

from __future__ import annotations

import re

import pytest

from bot.config import env_cache_dir
from bot.services import summary_check as sc
from bot.telegram import texts
from lm import hub
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.make_docs import make_pdf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ALICE = 2202
PAGES = [
    "Page 1 of 3\nThe Kelvara bridge opened in 1932. The engineer Marta Lind built it for 4 million crowns.\n"
    "For forty years it was the only road across the river between Osterby and the coast.",
    "Page 2 of 3\nIn March 1968 a flood tore away two of the nine arches of the bridge.\n"
    "The army ran a ferry that carried 3,000 people a day until the arches were rebuilt in 1970.",
    "Page 3 of 3\nIn 2015 the council of Osterby opened a tunnel under the river.\n"
    "Since then the old bridge carries only cyclists and walkers. It became a listed monument in 2019.",
]


async def until(fake: FakeTelegram, predicate, timeout: float):
    """fake.wait_for, failing with what the chat shows when the condition is not met."""
    try:
        return await fake.wait_for(predicate, timeout)
    except TimeoutError:
        raise AssertionError([m.text for m in fake.messages(ALICE)]) from None


@pytest.fixture(scope="module")
def qwen() -> str:
    return str(hub.pull("qwen2.5-coder-0.5b", env_cache_dir()))


@pytest.mark.timeout(1800)  # a 0.5B model on a CPU: minutes on a busy machine
async def test_the_model_summarizes_the_whole_pdf_and_the_conversation(tmp_path, qwen):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, qwen)
        settings.cache_dir = env_cache_dir()  # the real encoder and the converted weights, shared
        settings.model.weights = "int4"
        settings.model.context_tokens = 2048
        settings.model.max_new_tokens = 60
        assert settings.documents.summary_writing == "auto"  # a 0.5B model writes its summaries
        async with running_bot(settings):
            fake.send_user_document(ALICE, ALICE, "bridge_history.pdf", make_pdf(PAGES), "application/pdf")
            await until(fake, lambda: any(m.text.startswith("Indexed bridge_history.pdf")
                                            for m in fake.messages(ALICE)), 120)
            fake.send_user_message(ALICE, ALICE, "/summarize bridge")
            summary = await until(fake, lambda: next((m for m in fake.messages(ALICE) if m.from_bot and (
                m.text.startswith("Summary of") or m.text in (texts.SUMMARY_FAILED,))), None), 600)
            assert summary.text.startswith("Summary of"), [m.text for m in fake.messages(ALICE)]
            body = summary.text.split("\n", 2)[2]
            assert "Page" not in body and "•" not in body.replace("• ", "")  # no page header, no bare bullet
            sentences = sc.split_sentences(re.sub(r"^• ", "", body, flags=re.M))
            assert sentences and not any(sc.is_fragment(s) for s in sentences), sentences
            source = sc.Source(PAGES)
            assert all(sc.unsupported(s, source) == [] for s in sentences), sentences
            first, last = sc.content_terms(PAGES[0]) - sc.content_terms(PAGES[2]), \
                sc.content_terms(PAGES[2]) - sc.content_terms(PAGES[0])
            said = sc.content_terms(body)
            assert said & first and said & last, body  # the first page and the last

            fake.send_user_message(ALICE, ALICE, "Which year did the old bridge become a listed monument?")
            await until(fake, lambda: final_reply(fake, ALICE), 180)
            fake.send_user_message(ALICE, ALICE, "/summarize")
            talk = await until(fake, lambda: next((m for m in fake.messages(ALICE)
                                                     if m.text.startswith("Summary of this conversation")), None), 300)
    text = talk.text.split("\n", 2)[2]
    assert "User:" not in text and "Assistant:" not in text  # not a list of turns
    assert re.search(r"monument|listed", text, re.IGNORECASE), text  # what was asked
