"""Documents through Telegram: upload, index with progress, answer with sources, /docs, /forget, bad files,
and a chat never seeing another chat's documents. Real MiniLM encoder, tiny random chat model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.services.answer import NO_ANSWER, NOT_FOUND
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ALICE, BOB = 2001, 2002
GUIDE = b"""# Volcano guide

## Eruptions
Mount Kelvara erupted in 1872 and covered the valley of Osterby in grey ash.
The eruption lasted eleven days and the ash cloud reached the coast.

## Monitoring
Seismometers around Kelvara are read every ten minutes by the observatory in Osterby.
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=2048).path


def _settings(tmp_path, fake, model):
    from bot.config import env_cache_dir

    s = bot_settings(tmp_path, fake, model)
    s.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
    s.model.context_tokens = 1024
    return s


def _texts(fake, chat):
    return [m.text for m in fake.messages(chat)]


async def test_upload_ask_with_sources_docs_forget_and_isolation(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_document(ALICE, ALICE, "volcano.md", GUIDE, "text/markdown")
            await fake.wait_for(lambda: any(t.startswith("Indexed volcano.md") for t in _texts(fake, ALICE)), 60)
            status = next(m for m in fake.messages(ALICE) if m.text.startswith("Indexed volcano.md"))
            assert len(status.versions) >= 2, "the status message was edited as indexing went on"

            fake.send_user_document(ALICE, ALICE, "copy.md", GUIDE, "text/markdown")
            await fake.wait_for(lambda: any("already have this file" in t for t in _texts(fake, ALICE)), 30)

            fake.send_user_message(ALICE, ALICE, "When did Mount Kelvara erupt?")
            answer = await fake.wait_for(lambda: final_reply(fake, ALICE), 60)
            # the tiny random model copies some span of a sentence that (with the one before it) names Mount
            # Kelvara, or finds none and quotes the closest; either way the reply cites the document
            if answer.text.startswith(NO_ANSWER):
                assert "(volcano.md) says:\n“Mount Kelvara erupted in 1872" in answer.text
            else:
                head, _, quoted = answer.text.partition("\n\nSource: volcano.md\n“")
                assert quoted and head.lower() in quoted.lower(), answer.text  # copied from the quoted sentence

            # small talk in a chat with documents gets a chat reply, not a search result
            fake.send_user_message(ALICE, ALICE, "Tell me a short joke about cats.")
            chat = await fake.wait_for(lambda: final_reply(fake, ALICE, after=1), 60)
            assert "volcano.md" not in chat.text and NOT_FOUND not in chat.text and NO_ANSWER not in chat.text

            fake.send_user_message(ALICE, ALICE, "/docs")
            await fake.wait_for(lambda: "volcano.md" in (fake.last_text(ALICE) or "") and
                                "Documents in this chat" in fake.last_text(ALICE), 10)

            # Bob's chat has no documents: forced document mode finds nothing, Alice's file is never seen
            fake.send_user_message(BOB, BOB, "/ask When did Mount Kelvara erupt?")
            await fake.wait_for(lambda: any(NOT_FOUND in t for t in _texts(fake, BOB)), 60)
            assert not any("volcano.md" in t for t in _texts(fake, BOB))
            assert await settings_search(settings, BOB, "Mount Kelvara eruption") == []

            fake.send_user_message(ALICE, ALICE, "/forget volcano.md")
            await fake.wait_for(lambda: "Forgot volcano.md" in (fake.last_text(ALICE) or ""), 10)
            fake.send_user_message(ALICE, ALICE, "/ask When did Mount Kelvara erupt?")
            await fake.wait_for(lambda: NOT_FOUND in (fake.last_text(ALICE) or ""), 60)
        assert await settings_search(settings, ALICE, "Mount Kelvara eruption") == []


async def settings_search(settings, chat_id, query):
    """What retrieval in this chat's scope returns, straight from the service."""
    from bot.db.session import create_engine, session_factory
    from bot.services.knowledge import KnowledgeBase, chat_scope

    engine = create_engine(settings.database_url)
    try:
        kb = KnowledgeBase(settings, session_factory(engine))
        return await kb.search(chat_scope(chat_id), query)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name, data, expect", [
    ("notes.txt", b"\x00\x01\x02binary\x00" * 200, "binary"),
    ("report.pdf", b"%PDF-1.4\n1 0 obj<<>>\n", "PDF"),
    ("empty.txt", b"   \n", "empty"),
    ("tool.exe", b"MZ\x90\x00" + b"\x00" * 100, "Windows program"),
])
async def test_bad_files_get_a_specific_message_and_store_nothing(tmp_path, tiny_model, name, data, expect):
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_document(ALICE, ALICE, name, data, "application/octet-stream")
            await fake.wait_for(lambda: len(fake.messages(ALICE)) >= 1 and "…" not in fake.messages(ALICE)[-1].text
                                and not fake.messages(ALICE)[-1].text.startswith("Indexing"), 60)
            final = fake.messages(ALICE)[-1].text
            fake.send_user_message(ALICE, ALICE, "/docs")
            await fake.wait_for(lambda: "No documents yet" in (fake.last_text(ALICE) or ""), 10)
    assert expect.lower() in final.lower(), final


async def test_a_five_thousand_character_file_name_is_shortened_keeping_its_extension(tmp_path, tiny_model):
    name = "volcano-" + "v" * 4992 + ".md"
    async with FakeTelegram() as fake:
        settings = _settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_document(ALICE, ALICE, name, GUIDE, "text/markdown")
            done = await fake.wait_for(lambda: next((m for m in fake.messages(ALICE) if m.text.startswith("Indexed ")),
                                                    None), 60)
            fake.send_user_message(ALICE, ALICE, "/docs")
            await fake.wait_for(lambda: "Documents in this chat" in (fake.last_text(ALICE) or ""), 10)
    shown = done.text.split(":", 1)[0].removeprefix("Indexed ")
    assert len(shown) == 200 and shown.startswith("volcano-vvv") and shown.endswith("v….md"), done.text
    assert shown in fake.last_text(ALICE)  # the stored name is the shortened one
    assert all(len(v.text) <= 4096 for m in fake.messages(ALICE) for v in m.versions)
