"""Replies survive a flaky connection to the Bot API: calls that the network drops (the fake Bot API closes the
connection without an answer, as a reset under a burst does: httpx.ReadError / RemoteProtocolError) are tried
again with backoff, so no question is left unanswered because of one."""

from __future__ import annotations

import pytest

from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USERS = [6100 + i for i in range(8)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf").path


def _dropped(fake: FakeTelegram, method: str) -> int:
    return sum(c.status == 0 for c in fake.calls(method))


async def test_a_dropped_typing_action_or_command_reply_is_sent_again(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model)):
            fake.fail_next("sendChatAction", status=0, count=2)
            fake.send_user_message(USERS[0], USERS[0], "hello")
            await fake.wait_for(lambda: final_reply(fake, USERS[0]), 60)
            fake.fail_next("sendMessage", status=0, count=2)
            fake.send_user_message(USERS[1], USERS[1], "/start")
            greeting = await fake.wait_for(lambda: fake.last_message(USERS[1]), 30)
    assert greeting.text.startswith("Hello")
    assert _dropped(fake, "sendChatAction") == 2 and _dropped(fake, "sendMessage") == 2


async def test_a_burst_with_dropped_connections_leaves_no_reply_lost(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            for method in ("sendMessage", "editMessageText", "sendChatAction"):
                fake.fail_next(method, status=0, count=3)
            for user in USERS:
                fake.send_user_message(user, user, f"hello from {user}")
            replies = [await fake.wait_for(lambda u=user: final_reply(fake, u), 120) for user in USERS]
    assert all(r.text.strip() for r in replies)
    assert [_dropped(fake, m) for m in ("sendMessage", "editMessageText", "sendChatAction")] == [3, 3, 3]
    for user in USERS:  # one reply each, however many tries it took
        assert len([m for m in fake.messages(user) if m.reply_markup]) == 1
