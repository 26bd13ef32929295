"""A user's own Telegram text with a lone surrogate (JSON allows "\\ud800"; Python then holds a str that UTF-8
cannot encode): the bot stores it, answers it, and shows it back, with the surrogate replaced, for a chat
message and for /ask."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.session import create_engine, session_factory
from bot.db.tables import Message
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER = 1301


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=1024).path


async def test_a_lone_surrogate_in_a_users_text_is_replaced_and_the_message_answered(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "broken \ud83d emoji, please answer")
            await fake.wait_for(lambda: final_reply(fake, USER), 60)
            fake.send_user_message(USER, USER, "/ask what is \udc00 this?")
            await fake.wait_for(lambda: len([m for m in fake.messages(USER) if m.from_bot]) >= 2
                                and "…" != fake.messages(USER)[-1].text, 60)
        engine = create_engine(settings.database_url)
        async with session_factory(engine)() as s:
            rows = list(await s.scalars(select(Message).order_by(Message.id)))
        await engine.dispose()
    assert rows[0].text == "broken \ufffd emoji, please answer"
    assert rows[1].role == "assistant" and rows[1].status == "complete"
    assert [m.text for m in rows if m.role == "user"][1] == "what is \ufffd this?"
