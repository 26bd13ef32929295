"""Replies that have to wait, through the real bot and the fake Bot API: a user's second message is answered
after the first (not dropped), and chats beyond the batch see their place in the queue until their reply
starts."""

from __future__ import annotations

import asyncio

import pytest

from bot.db.tables import Message
from bot.telegram.texts import AFTER_YOUR_PREVIOUS
from tests.e2e.test_bot import _rows, endless_model  # noqa: F401 (a fixture)
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 3003


async def test_a_second_message_sent_while_the_first_is_answered_is_answered_after_it(tmp_path, endless_model):  # noqa: F811
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, endless_model)
        settings.model.max_new_tokens = 40  # the endless model writes all of them: the first reply takes a while
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "first question")
            await fake.wait_for(lambda: fake.messages(USER) and any(m.from_bot for m in fake.messages(USER)),
                                timeout=60)
            fake.send_user_message(USER, USER, "second question")
            second = await fake.wait_for(lambda: final_reply(fake, USER, after=1), timeout=120)
            first = [m for m in fake.messages(USER) if m.from_bot and m.reply_markup][0]
        assert second.versions[0].text == AFTER_YOUR_PREVIOUS  # told at once, then edited into the answer
        assert second.message_id != first.message_id and second.text.strip()
        rows = await _rows(settings, chat_id=USER)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")] * 2
    assert [m.text for m in rows if m.role == "user"] == ["first question", "second question"]
    assert rows[3].telegram_message_id == second.message_id


async def test_chats_beyond_the_batch_see_their_place_and_are_all_answered(tmp_path, endless_model):  # noqa: F811
    users = [4100 + i for i in range(5)]
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, endless_model)
        settings.model.batch_size = 1  # one reply at a time: the others queue
        # long enough that the queue is still full when the last chats join it, however busy the machine
        settings.model.max_new_tokens = 64
        settings.telegram.edit_interval_private_s = 0.0
        async with running_bot(settings):
            for user in users:
                fake.send_user_message(user, user, f"hello from {user}")
            replies = [await fake.wait_for(lambda u=user: final_reply(fake, u), timeout=180) for user in users]
    shown = [[v.text for v in reply.versions] for reply in replies]
    queued = [texts for texts in shown if any(t.startswith("⏳ queued:") for t in texts)]
    assert queued, shown  # with one slot, later chats waited and were told so
    assert any("ahead of you" in t for texts in queued for t in texts)  # a place, not just "waiting"
    for texts in shown:
        assert not texts[-1].startswith("⏳")  # every placeholder became the reply
    rows = [m for u in users for m in await _rows(settings, chat_id=u)]
    assert sorted((m.role, m.status) for m in rows if isinstance(m, Message)) == \
        sorted([("user", "complete"), ("assistant", "complete")] * len(users))


async def test_a_reply_stopped_before_any_text_is_not_stored_as_a_turn(tmp_path, endless_model):  # noqa: F811
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, endless_model)
        settings.telegram.generation_timeout_s = 0.0  # the limit runs out as soon as generation starts
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "a question")
            note = await fake.wait_for(lambda: [m for m in fake.messages(USER) if m.from_bot
                                                and "took too long" in m.text], timeout=60)
        rows = await _rows(settings, chat_id=USER)
    assert note[0].text.startswith("⏱️")
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "failed")]


async def test_cancel_stops_the_senders_reply_only_and_keeps_its_text(tmp_path, endless_model):  # noqa: F811
    other = USER + 1
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, endless_model)
        settings.model.context_tokens = 2048
        settings.model.max_new_tokens = 1500  # the endless model writes all of them unless stopped
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "tell me everything")
            fake.send_user_message(other, other, "tell me everything too")
            # streaming: past the placeholders ("…", STARTING_UP), not finished
            await fake.wait_for(lambda: any(m.from_bot and len(m.text) > 100 and not m.reply_markup
                                            for m in fake.messages(USER)), timeout=60)
            # "Stopping…" held back on its way, as by a slow network: the reply must still say it stopped only
            # after that (it was told to stop only once the bot had said so)
            fake.before_call("sendMessage", lambda p: asyncio.sleep(3) if p.get("text", "").startswith("Stopping")
                             else None)
            fake.send_user_message(USER, USER, "/cancel")
            stopped = await fake.wait_for(lambda: final_reply(fake, USER), timeout=60)
            finished = await fake.wait_for(lambda: final_reply(fake, other), timeout=180)
            # "Stopping your reply…" is edited to say what was stopped once it has ended: it does not stay
            await fake.wait_for(lambda: next((m for m in fake.messages(USER) if m.texts == [
                "Stopping your reply…", "Stopped your reply."]), None), timeout=30)
        said = [str(c.params.get("text")) for c in fake.calls() if c.method in ("sendMessage", "editMessageText")]
        assert said.index("Stopping your reply…") < min(
            n for n, text in enumerate(said) if text.endswith("(stopped with /cancel)"))
        rows = await _rows(settings, chat_id=USER)
    assert stopped.text.endswith("⏹️ (stopped with /cancel)") and len(stopped.text) > 30  # what came is kept
    assert "stopped" not in finished.text
    assert len(stopped.text) < len(finished.text)  # it ended before its 1,500 tokens
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[1].text == stopped.text
