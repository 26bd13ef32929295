"""What users send that the bot cannot handle gets a short, specific reply through the real client:
photos, voice messages, stickers and unknown commands; /help shows everything, and the admin commands
to admins only, in private."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from telegram.ext import CommandHandler

from tests.support.bot_harness import bot_settings, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER, ADMIN, GROUP = 1001, 1009, -5001


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf").path


async def _reply(fake: FakeTelegram, chat: int, before: int, timeout: float = 20):
    """The first bot message in the chat after the first `before` ones."""
    return await fake.wait_for(lambda: next(iter(fake.messages(chat)[before:]), None), timeout=timeout)


async def test_help_lists_documents_commands_and_feedback_and_admin_commands_only_for_admins(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])) as app:
            registered = {c for group in app.handlers.values() for h in group if isinstance(h, CommandHandler)
                          for c in h.commands}
            menu = {c.command for c in app.bot_data["commands"]}
            fake.send_user_message(USER, USER, "/help")
            user_help = (await _reply(fake, USER, 0)).text
            fake.send_user_message(ADMIN, ADMIN, "/help")
            admin_help = (await _reply(fake, ADMIN, 0)).text
            fake.send_user_message(GROUP, ADMIN, "/help@docent_test_bot", chat_type="group")
            group_help = (await _reply(fake, GROUP, 0)).text
    for command in ("/ask", "/docs", "/forget", "/summarize", "/training", "/reset", "/settings", "/stats"):
        assert command in user_help and command in admin_help
    assert "PDF" in user_help and "👍" in user_help
    assert "/retrain" not in user_help and "/rollback" not in user_help
    assert "/ask" in group_help and "/retrain" not in group_help  # an admin's group need not see them
    assert "every chat's totals" in admin_help and "every chat's totals" not in user_help + group_help
    for command in ("/retrain", "/train_status", "/train_cancel", "/models", "/rollback"):
        assert command in admin_help
    # every command the bot answers is in its menu and in an admin's /help, whichever branch added it
    assert menu == registered and "stats" in registered
    assert [c for c in sorted(registered) if f"/{c} " not in admin_help] == []


@pytest.mark.parametrize(("kind", "says"), [
    ("photo", "I cannot see images yet."),
    ("voice", "I cannot listen to voice messages yet."),
    ("sticker", "I cannot read stickers."),
])
async def test_media_gets_a_reply_saying_what_the_bot_can_read(tmp_path, tiny_model, kind, says):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model)):
            fake.send_user_media(USER, USER, kind)
            reply = await _reply(fake, USER, 0)
    assert reply.text.startswith(says) and "PDF, DOCX" in reply.text and "/help" in reply.text


async def test_unknown_command_points_to_help_and_the_bot_keeps_answering(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model)):
            fake.send_user_message(USER, USER, "/frobnicate now")
            reply = await _reply(fake, USER, 0)
            assert reply.text == "I do not know the command /frobnicate. /help lists the ones I have."
            fake.send_user_message(USER, USER, "/help")
            assert "/ask" in (await _reply(fake, USER, 1)).text


async def test_in_groups_media_and_unknown_commands_get_a_reply_only_when_addressed(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        async with running_bot(bot_settings(tmp_path, fake, tiny_model)):
            fake.send_user_media(GROUP, USER, "photo", caption="look at this", chat_type="group")
            fake.send_user_message(GROUP, USER, "/frobnicate", chat_type="group")  # maybe another bot's
            fake.send_user_media(GROUP, USER, "photo", caption="@docent_test_bot what is this?", chat_type="group")
            reply = await _reply(fake, GROUP, 0)
            assert reply.text.startswith("I cannot see images yet.")
            fake.send_user_message(GROUP, USER, "/frobnicate@docent_test_bot", chat_type="group")
            reply = await _reply(fake, GROUP, 1)
            assert reply.text.startswith("I do not know the command /frobnicate.")
            await asyncio.sleep(0.5)  # the unaddressed ones, had they been answered, would be by now
            assert len(fake.messages(GROUP)) == 2
