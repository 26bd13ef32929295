"""Inline buttons through the real bot and the fake Bot API: every press is answered (no endless spinner), a
vote from a group member the bot has never seen is stored, and forged callback data is refused and changes
nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.session import create_engine, session_factory
from bot.db.tables import ChatSettings, Feedback, User
from bot.telegram.texts import BAD_BUTTON
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER, STRANGER, GROUP = 1101, 1102, -100777


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


async def _rows(settings, model):
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            return list(await s.scalars(select(model)))
    finally:
        await engine.dispose()


def _answers(fake: FakeTelegram) -> list[str]:
    return [str(c.params.get("text") or "") for c in fake.calls("answerCallbackQuery") if c.status == 200]


async def test_a_vote_from_a_group_member_the_bot_has_never_seen_is_answered_and_stored(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(GROUP, USER, "@docent_test_bot hello there", chat_type="group", title="Team")
            reply = await fake.wait_for(lambda: final_reply(fake, GROUP), timeout=60)
            fake.press_button(GROUP, STRANGER, reply.message_id, "fb:-1", username="lurker")
            await fake.wait_for(lambda: _answers(fake), timeout=20)
        assert _answers(fake) == ["Thanks for the feedback!"]
    votes = await _rows(settings, Feedback)
    assert [(v.user_id, v.value) for v in votes] == [(STRANGER, -1)]
    assert {u.id: u.username for u in await _rows(settings, User)}[STRANGER] == "lurker"


@pytest.mark.parametrize("data", ["temp:abc", "temp:nan", "temp:inf", "temp:1e308", "temp:-1", "temp:", "",
                                  "fb:2", "fb:", "nonsense"])
async def test_forged_button_data_is_refused_with_a_short_answer_and_changes_nothing(tmp_path, tiny_model, data):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "/settings")
            menu = await fake.wait_for(lambda: next((m for m in fake.messages(USER) if m.reply_markup), None),
                                       timeout=20)
            fake.press_button(USER, USER, menu.message_id, data)
            await fake.wait_for(lambda: _answers(fake), timeout=20)
            assert _answers(fake) == [BAD_BUTTON]
            fake.press_button(USER, USER, menu.message_id, "temp:0.7")  # the bot still works for this chat
            await fake.wait_for(lambda: len(_answers(fake)) == 2, timeout=20)
            assert _answers(fake)[1] == "Temperature set to 0.7"
    assert [s.temperature for s in await _rows(settings, ChatSettings)] == [0.7]
    assert await _rows(settings, Feedback) == []
