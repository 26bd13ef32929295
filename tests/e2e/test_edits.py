"""An edited message is not answered a second time: the bot notes once per edit that edits are not re-answered,
stores nothing new, and runs no command again; in a group, edits of messages not meant for it get nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db.session import create_engine, session_factory
from bot.db.tables import Message
from bot.telegram.texts import EDIT_NOTE
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER, GROUP = 1201, -100120


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


async def _stored_messages(settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            return await s.scalar(select(func.count()).select_from(Message))
    finally:
        await engine.dispose()


async def test_an_edit_gets_a_note_instead_of_a_second_reply(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "Tell me about foxes")
            await fake.wait_for(lambda: final_reply(fake, USER), 60)
            asked = fake.user_messages(USER)[-1].message_id
            fake.edit_user_message(USER, asked, "Tell me about wolves")
            await fake.wait_for(lambda: fake.last_text(USER) == EDIT_NOTE, 10)

            fake.send_user_message(USER, USER, "/help")
            await fake.wait_for(lambda: len(fake.messages(USER)) == 3, 10)
            fake.edit_user_message(USER, fake.user_messages(USER)[-1].message_id, "/reset")
            await fake.wait_for(lambda: fake.last_text(USER) == EDIT_NOTE and len(fake.messages(USER)) == 4, 10)

            # a group message not meant for the bot, edited: nothing at all; then a fresh message shows the
            # bot had handled every update before it
            fake.send_user_message(GROUP, USER, "lunch at noon?", chat_type="supergroup")
            fake.edit_user_message(GROUP, fake.user_messages(GROUP)[-1].message_id, "lunch at one?")
            fake.send_user_message(USER, USER, "/help")
            await fake.wait_for(lambda: len(fake.messages(USER)) == 5, 10)
            assert fake.messages(GROUP) == []
        texts = [m.text for m in fake.messages(USER)]
        assert len([t for t in texts if t == EDIT_NOTE]) == 2 and "Started a new conversation" not in " ".join(texts)
        assert len([m for m in fake.messages(USER) if m.reply_markup and "fb:1" in str(m.reply_markup)]) == 1
        assert await _stored_messages(settings) == 2  # the question and its one reply; the edit stored nothing
