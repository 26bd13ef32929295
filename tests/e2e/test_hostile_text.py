"""U+0000 and lone surrogates in every field of an update that reaches SQL or a reply, on SQLite and on
PostgreSQL (which refuses U+0000 in text): a message, a command and its arguments, a user's names, a chat's
title and a file name. Each is answered, and stored with those characters as U+FFFD. Real bot over the fake Bot
API, tiny random chat model, the real MiniLM encoder for the upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.session import create_engine, session_factory
from bot.db.tables import Chat, ChatSettings, Chunk, Document, Job, Message, User
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
USER, GROUP = 3101, -100310
BAD = "\x00\ud800"  # what PostgreSQL refuses, and what no UTF-8 encoder takes
SAFE = "\ufffd\ufffd"  # what each becomes
NAME, HANDLE, TITLE, FILE = f"Ann{BAD}", f"ann{BAD}x", f"g{BAD}rp", f"wr{BAD}en.txt"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=1024).path


async def _rows(url: str, model) -> list:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s:
            return list(await s.scalars(select(model)))
    finally:
        await engine.dispose()


async def test_nul_and_lone_surrogates_in_every_field_are_answered_and_stored(tmp_path, tiny_model, db_url):
    from bot.config import env_cache_dir

    def said(chat: int, text: str) -> bool:
        return any(m.text == text for m in fake.messages(chat))

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.database.url = db_url
        settings.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
        who = {"username": HANDLE, "first_name": NAME}
        async with running_bot(settings):
            fake.send_user_message(USER, USER, f"hello{BAD}world, name a fruit", **who)
            await fake.wait_for(lambda: final_reply(fake, USER), 60)
            fake.send_user_message(USER, USER, f"/settings system be{BAD}brief", **who)
            await fake.wait_for(lambda: said(USER, "System prompt updated."), 30)
            fake.send_user_message(USER, USER, f"/x{BAD}y", **who)
            await fake.wait_for(lambda: said(USER, f"I do not know the command /x{SAFE}y. /help lists the ones I have."),
                                30)
            fake.send_user_message(USER, USER, f"/forget a{BAD}b", **who)
            await fake.wait_for(lambda: said(USER, f"No document called 'a{SAFE}b' here. See /docs."), 30)

            fake.send_user_document(GROUP, USER, FILE, b"Wrens are small brown birds that sing loudly.\n",
                                    "text/plain", chat_type="group", title=TITLE, username=HANDLE)
            await fake.wait_for(lambda: any(m.text.startswith(f"Indexed wr{SAFE}en.txt: ")
                                            for m in fake.messages(GROUP)), 90)
            fake.send_user_message(GROUP, USER, f"@docent_test_bot tell me a{BAD} joke", chat_type="group", **who)
            await fake.wait_for(lambda: final_reply(fake, GROUP), 60)
            fake.send_user_message(GROUP, USER, "/docs", chat_type="group", **who)
            await fake.wait_for(lambda: any(f"wr{SAFE}en.txt" in m.text and m.text.startswith("Documents")
                                            for m in fake.messages(GROUP)), 30)

        users, chats = await _rows(db_url, User), await _rows(db_url, Chat)
        texts = [m.text for m in await _rows(db_url, Message) if m.role == "user"]
        prompts = [c.system_prompt for c in await _rows(db_url, ChatSettings)]
        documents, jobs = await _rows(db_url, Document), await _rows(db_url, Job)
    assert [(u.first_name, u.username) for u in users] == [(f"Ann{SAFE}", f"ann{SAFE}x")]
    assert {c.id: c.title for c in chats}[GROUP] == f"g{SAFE}rp"
    assert texts == [f"hello{SAFE}world, name a fruit", f"tell me a{SAFE} joke"]
    assert prompts == [f"be{SAFE}brief"]
    assert [d.name for d in documents] == [f"wr{SAFE}en.txt"] and jobs == []
    # nothing the bot sent holds what the update held
    assert not [m for chat in (USER, GROUP) for m in fake.messages(chat) if "\x00" in m.text or "\ud800" in m.text]


@pytest.fixture(scope="module")
def nul_model(tmp_path_factory) -> Path:
    """A tiny model that writes only U+0000 (its byte token, "Ā" in byte-level BPE): the blocks add nothing to the
    residual stream, the final norm keeps one dimension, which every embedding sets to 1, and only that token's
    output row reads it."""

    path = tmp_path_factory.mktemp("nul") / "nul.gguf"
    tiny = write_tiny_gguf(path, max_seq_len=1024, tie_embeddings=False)
    sd = {k: v.clone() for k, v in tiny.state_dict.items()}
    for key in sd:
        if key.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            sd[key].zero_()
    sd["tok_embeddings.weight"][:, 0] = 1.0
    sd["norm.weight"].zero_()
    sd["norm.weight"][0] = 1.0
    sd["output.weight"].zero_()
    sd["output.weight"][tiny.tokens.index("Ā"), 0] = 10.0
    return write_tiny_gguf(path, max_seq_len=1024, tie_embeddings=False, state_dict=sd).path


async def test_nul_written_by_the_model_or_read_from_a_document_is_answered_and_stored(tmp_path, nul_model, db_url):
    """What the bot itself produces reaches SQL cleaned too: a model's reply made of U+0000, and a PDF whose
    character map yields U+0000, indexed and summarized (PostgreSQL refused both)."""
    from bot.config import env_cache_dir
    from tests.support.hostile_files import nul_pdf

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, nul_model)
        settings.database.url = db_url
        settings.cache_dir = env_cache_dir()
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "say something")
            reply = await fake.wait_for(lambda: final_reply(fake, USER), 60)
            fake.send_user_document(USER, USER, "nul.pdf", nul_pdf(), "application/pdf")
            await fake.wait_for(lambda: any(m.text.startswith("Indexed nul.pdf") for m in fake.messages(USER)), 90)
            fake.send_user_message(USER, USER, "/summarize nul.pdf")
            summary = await fake.wait_for(lambda: next((m for m in fake.messages(USER)
                                                        if m.text.startswith("Summary of")), None), 60)
        replies = [(m.text, m.status) for m in await _rows(db_url, Message) if m.role == "assistant"]
        chunks = [c.text for c in await _rows(db_url, Chunk)]
        jobs = await _rows(db_url, Job)
    assert reply.text and set(reply.text) == {"\ufffd"}  # shown as stored
    assert replies == [(reply.text, "complete")]
    assert chunks == ["The tide tables of Osterby: rising, falling."] and jobs == []  # U+0000 is shown as nothing
    assert "Osterby" in summary.text
    assert not [m for m in fake.messages(USER) if "\x00" in m.text]


@pytest.mark.parametrize("flood", ["😀" * 2100, "e\u0301" * 1500], ids=["emoji", "combining marks"])
async def test_a_message_under_the_character_limit_but_past_the_context_is_called_too_long(tmp_path, tiny_model,
                                                                                          flood):
    """2,100 emoji or 1,500 letters with a combining accent: under the 4,000-character limit, far past a context
    of 256 tokens. The user is told the message is too long, in words, not in tokens."""
    from bot.telegram.texts import TOO_LONG_FOR_ME

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        assert len(flood) < settings.telegram.max_input_chars
        async with running_bot(settings):
            fake.send_user_message(USER, USER, flood)
            said = await fake.wait_for(lambda: next((m for m in fake.messages(USER) if m.from_bot
                                                     and m.text not in ("…", "Starting up, one moment…")), None), 60)
    assert said.text == TOO_LONG_FOR_ME
