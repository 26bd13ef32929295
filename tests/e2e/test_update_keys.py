"""Each update is handled once, known by what it is rather than by the Bot API's number for it (issue 27; issue 28
item 2; issue 30 item 6): a message in another chat under a number seen before is answered, so is every message
after the numbering restarts (a new token over the same data directory), and the same /start or question
delivered twice, even under a new number, gets one answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
ANN, BOB, GROUP = 1001, 1002, -2001


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


def _greetings(fake: FakeTelegram, chat_id: int) -> list:
    return [m for m in fake.messages(chat_id) if m.text.startswith("Hello Ann!")]


async def test_the_same_start_or_question_delivered_twice_is_answered_once(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model)):
            start = fake.send_user_message(ANN, ANN, "/start", first_name="Ann")
            await fake.wait_for(lambda: _greetings(fake, ANN), timeout=30)
            fake.deliver_again(start, renumber=True)  # the same message, under a number the bot has not seen
            question = fake.send_user_message(ANN, ANN, "hello there")
            await fake.wait_for(lambda: final_reply(fake, ANN), timeout=60)
            fake.deliver_again(question, renumber=True)
            fake.send_user_message(ANN, ANN, "/help")  # handled after both copies: the queue is in order
            await fake.wait_for(lambda: "/summarize" in (fake.last_text(ANN) or ""), timeout=30)
            await fake.wait_for(lambda: not fake.pending_updates(), timeout=30)
    assert len(_greetings(fake, ANN)) == 1, [m.text for m in fake.messages(ANN)]
    replies = [m for m in fake.messages(ANN) if m.reply_markup and "fb:1" in str(m.reply_markup)]
    assert len(replies) == 1, "the question delivered twice was answered twice"


async def test_numbers_seen_before_in_another_chat_or_after_a_numbering_restart_are_answered(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            first = fake.send_user_message(ANN, ANN, "hello from Ann")
            fake.send_user_message(ANN, ANN, "/help")
            fake.send_user_message(ANN, ANN, "/stats")
            await fake.wait_for(lambda: final_reply(fake, ANN), timeout=60)
            await fake.wait_for(lambda: not fake.pending_updates() and len(fake.messages(ANN)) >= 3, timeout=30)
        # a new token over the same data directory: the Bot API numbers updates from 1 again
        fake.restart_update_numbering()
        async with running_bot(settings):
            again = fake.send_user_message(BOB, BOB, "hello from Bob")
            mention = fake.send_user_message(GROUP, ANN, "@docent_test_bot what is this?", chat_type="group",
                                             title="team")
            later = fake.send_user_message(ANN, ANN, "/start", first_name="Ann")
            assert (again, mention, later) == (first, first + 1, first + 2)  # numbers the first run saw
            await fake.wait_for(lambda: final_reply(fake, BOB), timeout=60)
            await fake.wait_for(lambda: final_reply(fake, GROUP), timeout=60)
            await fake.wait_for(lambda: _greetings(fake, ANN), timeout=30)
    assert len(_greetings(fake, ANN)) == 1
