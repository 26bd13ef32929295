"""/summarize through Telegram: a document's summary and the conversation's, rendered like other replies
(Telegram HTML in the status message, progress before it). Real MiniLM encoder, tiny random chat model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bot_harness import bot_settings, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ALICE = 2101
SENTENCES = [
    "Mount Kelvara erupted in 1872 and covered the valley of Osterby in grey ash.",
    "The eruption lasted eleven days and the ash cloud reached the coast of Norland.",
    "Seismometers around Kelvara are read every ten minutes by the observatory in Osterby.",
    "The observatory was founded in 1901 after a smaller eruption damaged the harbour.",
]
GUIDE = ("# Volcano guide\n\n## Eruptions\n" + " ".join(SENTENCES[:2]) + "\n\n## Monitoring\n"
         + " ".join(SENTENCES[2:]) + "\n").encode()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=2048).path


async def test_summaries_of_a_document_and_of_the_conversation_are_rendered(tmp_path, tiny_model):
    from bot.config import env_cache_dir

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
        settings.model.context_tokens = 1024
        async with running_bot(settings):
            fake.send_user_document(ALICE, ALICE, "volcano_guide.md", GUIDE, "text/markdown")
            await fake.wait_for(lambda: any(m.text.startswith("Indexed volcano_guide.md")
                                            for m in fake.messages(ALICE)), 60)

            fake.send_user_message(ALICE, ALICE, "/summarize volcano")
            summary = await fake.wait_for(lambda: next((m for m in fake.messages(ALICE)
                                                        if m.text.startswith("Summary of")), None), 60)
            assert summary.texts[0] == "Summarizing volcano_guide.md…"  # the status line became the summary
            assert summary.parse_mode == "HTML" and "<b>Summary of <code>volcano_guide.md</code>:</b>" in summary.html
            lines = summary.text.split("\n")[2:]
            assert lines and all(line.startswith("• ") for line in lines)
            assert all(line[2:] in SENTENCES for line in lines)  # whole sentences of the document, none made up
            assert SENTENCES[0] in summary.text

            before = len(fake.messages(ALICE))
            fake.send_user_message(ALICE, ALICE, "The ash from Kelvara reached the coast of Norland in 1872.")
            await fake.wait_for(lambda: any(m.from_bot and m.text != "…" for m in fake.messages(ALICE)[before:]), 60)
            fake.send_user_message(ALICE, ALICE, "/summarize")
            talk = await fake.wait_for(lambda: next((m for m in fake.messages(ALICE)
                                                     if m.text.startswith("Summary of this conversation")), None), 60)
            # the tiny model extracts: what was asked and answered, not a list of turns
            assert talk.parse_mode == "HTML" and "<b>You asked:</b>" in talk.html and "<b>User:</b>" not in talk.html
            assert "The ash from Kelvara reached the coast of Norland in 1872." in talk.text
