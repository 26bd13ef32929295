"""/stats through the real client and the fake Bot API: a user's own messages, reply tokens and documents in
the chat; an admin's per-chat totals and model in use, in private only; nobody else's chats for a non-admin.
Real MiniLM encoder for the upload, tiny random chat model for the replies."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db.session import create_engine, session_factory
from bot.db.tables import Message
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ALICE, BOB, ADMIN, GROUP = 2101, 2102, 2109, -2100
NOTES = b"# Field notes\n\nThe heron nests by the north pond every spring.\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf").path


async def _reply_tokens(settings, chat_id: int) -> int:
    """The token counts the bot stored for its replies in a chat."""
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            return await s.scalar(select(func.coalesce(func.sum(Message.token_count), 0))
                                  .where(Message.chat_id == chat_id, Message.role == "assistant"))
    finally:
        await engine.dispose()


async def _stats(fake: FakeTelegram, chat: int, user: int, **where) -> str:
    before = len(fake.messages(chat))
    fake.send_user_message(chat, user, "/stats", **where)
    found = await fake.wait_for(lambda: next((m for m in fake.messages(chat)[before:] if "📊" in m.text), None), 20)
    return found.text


async def _chat(fake: FakeTelegram, chat: int, user: int, texts: list[str]) -> None:
    for i, text in enumerate(texts):
        fake.send_user_message(chat, user, text)
        await fake.wait_for(lambda i=i: final_reply(fake, chat, after=i), timeout=60)


async def test_stats_count_a_users_messages_tokens_and_documents_and_admins_see_every_chat(tmp_path, tiny_model):
    from bot.config import env_cache_dir

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        settings.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
        async with running_bot(settings):
            registered = [c["command"] for call in fake.calls("setMyCommands") for c in call.params["commands"]]
            assert "stats" in registered  # in the clients' command menu
            await _chat(fake, ALICE, ALICE, ["hello there", "what is a heron?"])
            fake.send_user_document(ALICE, ALICE, "notes.md", NOTES, "text/markdown")
            await fake.wait_for(lambda: any(m.text.startswith("Indexed notes.md") for m in fake.messages(ALICE)), 60)
            await _chat(fake, BOB, BOB, ["good morning"])
            alice_tokens, bob_tokens = await _reply_tokens(settings, ALICE), await _reply_tokens(settings, BOB)
            assert alice_tokens > 0 and bob_tokens > 0

            mine = await _stats(fake, ALICE, ALICE)
            assert f"All time: 2 messages, {alice_tokens:,} reply tokens, 1 document" in mine, mine
            assert "Today (UTC): " in mine  # today's figures against the clock: see tests/unit/test_stats_queries.py
            assert "All chats" not in mine and "Model in use" not in mine and str(BOB) not in mine

            # in a group, Alice's numbers are her group's: none yet; an admin sees no other chat there
            in_group = await _stats(fake, GROUP, ALICE, chat_type="group", title="birders")
            assert "All time: 0 messages, 0 reply tokens, 0 documents" in in_group, in_group
            admin_in_group = await _stats(fake, GROUP, ADMIN, chat_type="group", title="birders")
            assert "All chats" not in admin_in_group and str(ALICE) not in admin_in_group
            assert "Send /stats in a private chat with me" in admin_in_group

            overview = await _stats(fake, ADMIN, ADMIN)
            assert f"Model in use: the configured model {tiny_model}" in overview, overview
            # the chats people wrote in (a /stats stores nothing, so the group is not one of them), busiest first
            assert f"All chats (2): 3 messages, {alice_tokens + bob_tokens:,} reply tokens, 1 document" in overview
            alice_line = f"(private {ALICE}): 2 messages, {alice_tokens:,} reply tokens, 1 document, 1 user"
            bob_line = f"(private {BOB}): 1 message, {bob_tokens:,} reply tokens, 0 documents, 1 user"
            assert alice_line in overview and bob_line in overview, overview
            assert overview.index(alice_line) < overview.index(bob_line)
