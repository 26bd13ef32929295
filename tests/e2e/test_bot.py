"""The real docent Application against the fake Bot API, with a tiny random-weight model (greedy, so its
reply is a fixed function of the prompt). What the reply says does not matter here; what happens to it does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db.session import create_engine, session_factory
from bot.db.tables import ChatSettings, Message, ProcessedUpdate
from bot.services.lm_gateway import ModelManager
from bot.telegram import texts
from bot.telegram.texts import INTERRUPTED_NOTE
from tests.support.bot_harness import bot_settings, final_reply, running_bot, start_bot_process
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER, OTHER = 1001, 1002


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory) -> Path:
    """A tiny model that never ends its turn: the end tokens' (tied) embedding rows are zero, so their logit is
    exactly 0 while the greedy pick is the largest of ~380 random logits, which is positive."""
    path = tmp_path_factory.mktemp("endless") / "endless.gguf"
    size = {"max_seq_len": 4096, "dim": 256, "n_layers": 6, "hidden_dim": 768}  # slow enough to be caught mid-reply
    tiny = write_tiny_gguf(path, **size)
    sd = dict(tiny.state_dict)
    sd["tok_embeddings.weight"] = sd["tok_embeddings.weight"].clone()
    for token in ("<|im_end|>", "<|endoftext|>"):
        sd["tok_embeddings.weight"][tiny.tokens.index(token)] = 0.0
    return write_tiny_gguf(path, state_dict=sd, **size).path


async def _rows(settings, model=Message, **where):
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            stmt = select(model)
            for key, value in where.items():
                stmt = stmt.where(getattr(model, key) == value)
            return list(await s.scalars(stmt.order_by(*model.__table__.primary_key.columns)))
    finally:
        await engine.dispose()


async def test_private_chat_reply_is_streamed_formatted_and_stored(tmp_path, tiny_model, caplog):
    caplog.set_level(logging.DEBUG)
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "hello there")
            reply = await fake.wait_for(lambda: final_reply(fake, USER), timeout=30)
            assert reply.parse_mode == "HTML"
            assert reply.reply_to_message_id is not None
            assert [c.params["commands"] for c in fake.calls("setMyCommands")], "commands were registered"
        rows = await _rows(settings, chat_id=USER)
        assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
        assert rows[0].text == "hello there"
        assert rows[1].telegram_message_id == reply.message_id
        assert rows[1].text.strip() and rows[1].text.strip()[:20] in reply.text
        secret = fake._token.split(":", 1)[1]
        assert caplog.records and not [r for r in caplog.records if secret in r.getMessage()], "token in a log line"


async def test_reset_starts_a_new_conversation_and_keeps_history(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "first question")
            first = await fake.wait_for(lambda: final_reply(fake, USER), timeout=30)
            fake.send_user_message(USER, USER, "/reset")
            await fake.wait_for(lambda: "new conversation" in (fake.last_text(USER) or ""), timeout=10)
            fake.send_user_message(USER, USER, "first question")
            second = await fake.wait_for(lambda: final_reply(fake, USER, after=1), timeout=30)
        # same message, same greedy model, fresh conversation: the same reply, so no old turn reached the model
        assert second.text == first.text
        rows = await _rows(settings, chat_id=USER)
        assert len({m.conversation_id for m in rows}) == 2
        assert sum(m.role == "user" for m in rows) == 2  # the old conversation is still stored


async def test_group_answers_mentions_and_replies_ignores_chatter(tmp_path, tiny_model):
    group = -100500
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(group, USER, "just chatting among ourselves", chat_type="group", title="G")
            fake.send_user_message(group, USER, f"@{fake.bot_user['username']} what do you think?",
                                   chat_type="group", title="G")
            first = await fake.wait_for(lambda: final_reply(fake, group), timeout=30)
            fake.send_user_message(group, OTHER, "replying to the bot", chat_type="group", title="G",
                                   reply_to_message_id=first.message_id)
            await fake.wait_for(lambda: final_reply(fake, group, after=1), timeout=30)
            fake.send_user_message(group, OTHER, "more chatter", chat_type="group", title="G")
            await asyncio.sleep(1.0)
        rows = await _rows(settings, chat_id=group)
        user_texts = [m.text for m in rows if m.role == "user"]
        assert user_texts == ["what do you think?", "replying to the bot"]  # mention stripped, chatter not stored
        assert len([m for m in fake.messages(group) if m.reply_markup]) == 2


async def test_user_not_on_the_allow_list_is_refused_and_nothing_is_stored(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, allowed_users=[USER])
        async with running_bot(settings):
            fake.send_user_message(OTHER, OTHER, "let me in")
            await fake.wait_for(lambda: "not on its list" in (fake.last_text(OTHER) or ""), timeout=10)
            fake.send_user_message(USER, USER, "hello")
            await fake.wait_for(lambda: final_reply(fake, USER), timeout=30)
        assert await _rows(settings, chat_id=OTHER) == []
        assert len(await _rows(settings, chat_id=USER)) == 2


async def test_long_reply_is_split_into_several_messages(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.model.max_new_tokens = 1800
        settings.model.context_tokens = 2048
        settings.model.no_repeat_ngram = 0  # the tiny model rambles past one message by looping
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "write a lot")
            last = await fake.wait_for(lambda: final_reply(fake, USER), timeout=120)
        stored = (await _rows(settings, chat_id=USER, role="assistant"))[0].text
        parts = [m for m in fake.messages(USER) if m.message_id <= last.message_id]
        assert len(stored) > 4096, "the tiny model is expected to ramble past one message"
        assert len(parts) >= 2
        assert all(len(m.text.encode("utf-16-le")) // 2 <= 4096 for m in parts)
        assert "".join(m.text for m in parts).replace("\n", "").replace(" ", "") == \
            stored.replace("\n", "").replace(" ", "")


async def test_429_while_streaming_still_delivers_the_final_text(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.model.max_new_tokens = 200
        async with running_bot(settings):
            fake.fail_next("editMessageText", status=429, retry_after=1, count=3)
            fake.send_user_message(USER, USER, "hello")
            reply = await fake.wait_for(lambda: final_reply(fake, USER), timeout=60)
        stored = (await _rows(settings, chat_id=USER, role="assistant"))[0]
        assert stored.status == "complete"
        assert [c for c in fake.calls("editMessageText") if c.status == 429], "the 429s were really served"
        assert stored.text.strip()[:50] in reply.text


async def test_twenty_chats_at_once_are_all_answered_and_stored(tmp_path, tiny_model):
    chats = [5000 + i for i in range(20)]
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.model.max_new_tokens = 8
        async with running_bot(settings):
            for chat in chats:
                fake.send_user_message(chat, chat, f"hello from chat {chat}")
            await fake.wait_for(lambda: all(final_reply(fake, c) for c in chats), timeout=120)
        for chat in chats:
            rows = await _rows(settings, chat_id=chat)
            assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
            assert rows[0].text == f"hello from chat {chat}"


async def test_reply_generated_but_not_delivered_before_a_crash_is_delivered_on_restart(tmp_path, tiny_model):
    from bot.db import message_queries

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings) as app:
            fake.send_user_message(USER, USER, "hello")
            reply = await fake.wait_for(lambda: final_reply(fake, USER), timeout=30)
            full_text = reply.text
            # the crash window: Telegram still shows a partial text ...
            await app.bot.edit_message_text("partial", chat_id=USER, message_id=reply.message_id)
        stored = (await _rows(settings, chat_id=USER, role="assistant"))[0]
        engine = create_engine(settings.database_url)
        async with session_factory(engine)() as s:  # ... while SQL holds the finished text, not yet "complete"
            await message_queries.update_message(s, stored.id, status="streaming", token_count=stored.token_count or 1)
        await engine.dispose()
        async with running_bot(settings):
            await fake.wait_for(lambda: fake.messages(USER)[0].text == full_text and final_reply(fake, USER), 30)
        assert len(fake.messages(USER)) == 1, "delivered into the same message, nothing sent twice"
        assert (await _rows(settings, chat_id=USER, role="assistant"))[0].status == "complete"


def _start_bot_process(tmp_path: Path, fake: FakeTelegram, model: Path) -> subprocess.Popen:
    return start_bot_process(tmp_path, fake, model, DOCENT_MODEL_TEMPERATURE="0",
                             DOCENT_MODEL_MAX_NEW_TOKENS="3000", DOCENT_MODEL_CONTEXT_TOKENS="4096",
                             DOCENT_TELEGRAM_EDIT_INTERVAL_PRIVATE_S="0.1")


def test_killed_mid_reply_and_restarted_never_answers_twice(tmp_path, endless_model):
    tiny_model = endless_model
    fake = FakeTelegram.start_in_thread()
    try:
        proc = _start_bot_process(tmp_path, fake, tiny_model)
        try:
            fake.send_user_message(USER, USER, "tell me a long story")
            # wait until the reply is streaming (placeholder sent and edited at least twice), then kill -9
            fake.wait_for_sync(lambda: fake.messages(USER) and len(fake.messages(USER)[0].versions) >= 3,
                               timeout=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        assert not final_reply(fake, USER), "the reply must still have been in progress"
        proc = _start_bot_process(tmp_path, fake, tiny_model)
        try:
            fake.wait_for_sync(lambda: INTERRUPTED_NOTE in (fake.messages(USER)[0].text or ""), timeout=60)
            time.sleep(2.0)  # room for a wrong second answer to show up
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        fake.close()
    assert len(fake.messages(USER)) == 1, "no second reply was sent after the restart"
    log_text = (tmp_path / "bot.log").read_text()
    assert "docent is running as @docent_test_bot" in log_text and fake._token.split(":", 1)[1] not in log_text
    settings = bot_settings(tmp_path, fake, tiny_model)
    rows = asyncio.run(_rows(settings, chat_id=USER))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted")]
    assert len(asyncio.run(_rows(settings, ProcessedUpdate, chat_id=USER))) == 1


def test_killed_before_the_reply_is_shown_the_user_is_told_after_the_restart(tmp_path, tiny_model):
    """kill -9 between storing a message and knowing the Telegram message that shows its reply (where the model is
    still loading after a start, "Starting up, one moment…"): once before that message is sent, once after Telegram
    took it but before the bot heard back. The update counts as handled only together with its reply's row, so
    after each restart the user is told, in a reply to their message, to send it again."""
    fake = FakeTelegram.start_in_thread()
    bot: dict = {"proc": None, "kill_at": None}

    def kill(method: str):
        def hook(params, result) -> None:
            opening = method == "sendChatAction" or params.get("text") in ("Starting up, one moment…", "…")
            if bot["kill_at"] == method and params.get("chat_id") == USER and opening:
                bot["kill_at"] = None
                bot["proc"].send_signal(signal.SIGKILL)
                bot["proc"].wait(10)
        return hook

    fake.after_call("sendChatAction", kill("sendChatAction"))  # the reply's first step: nothing shown yet
    fake.after_call("sendMessage", kill("sendMessage"))  # its placeholder is on screen; the bot never learns its id

    def notes() -> list:
        return [m for m in fake.messages(USER) if m.text == INTERRUPTED_NOTE]

    try:
        for n, method in enumerate(("sendChatAction", "sendMessage")):
            bot["kill_at"], bot["proc"] = method, _start_bot_process(tmp_path, fake, tiny_model)
            fake.wait_for_sync(lambda n=n: len(notes()) == n, timeout=60)  # the restart told the previous one
            fake.send_user_message(USER, USER, f"question {n}")
            fake.wait_for_sync(lambda: bot["proc"].poll() is not None, timeout=60)
        placeholder = fake.messages(USER)[-1]
        bot["proc"] = _start_bot_process(tmp_path, fake, tiny_model)
        try:
            fake.wait_for_sync(lambda: len(notes()) == 2, timeout=60)
            time.sleep(2.0)  # room for a wrong second answer to show up
        finally:
            bot["proc"].terminate()
            bot["proc"].wait(20)
    finally:
        if bot["proc"].poll() is None:
            bot["proc"].kill()
        fake.close()
    questions = [m.message_id for m in fake.user_messages(USER)]
    assert placeholder.text in ("Starting up, one moment…", "…")
    assert [(m.text, m.reply_to_message_id) for m in fake.messages(USER)] == [
        (INTERRUPTED_NOTE, questions[0]), (placeholder.text, questions[1]), (INTERRUPTED_NOTE, questions[1])]
    settings = bot_settings(tmp_path, fake, tiny_model)
    rows = asyncio.run(_rows(settings, chat_id=USER))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted")] * 2
    assert len(asyncio.run(_rows(settings, ProcessedUpdate))) == 2


def test_killed_while_a_message_waits_for_the_previous_reply_it_is_not_left_waiting(tmp_path, endless_model):
    """kill -9 while a second message waits for the reply to the first ("⏳ I'll answer this right after your
    previous message." on screen): the waiting message and its reply row were stored before it waited, with the
    Telegram message that says so, so after the restart that message says the reply was interrupted instead of
    waiting for good (and Telegram, which had the update acknowledged, does not deliver it again)."""
    fake = FakeTelegram.start_in_thread()
    settings = bot_settings(tmp_path, fake, endless_model)

    def waiting_shown_and_known() -> bool:
        waiting = [m for m in fake.messages(USER) if m.text == texts.AFTER_YOUR_PREVIOUS]
        known = {m.telegram_message_id for m in asyncio.run(_rows(settings, role="assistant"))}
        return bool(waiting) and waiting[0].message_id in known

    try:
        proc = _start_bot_process(tmp_path, fake, endless_model)
        try:
            fake.send_user_message(USER, USER, "tell me a long story")
            fake.wait_for_sync(lambda: fake.messages(USER) and len(fake.messages(USER)[0].versions) >= 2, 60)
            fake.send_user_message(USER, USER, "and then another one")
            fake.wait_for_sync(lambda: any(m.text == texts.AFTER_YOUR_PREVIOUS for m in fake.messages(USER)), 30)
            with contextlib.suppress(TimeoutError):  # the bot records the message it waits in: kill after that
                deadline = time.monotonic() + 10
                while not waiting_shown_and_known() and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        waiting = next(m for m in fake.messages(USER) if m.text == texts.AFTER_YOUR_PREVIOUS)
        assert not final_reply(fake, USER), "the first reply must still have been in progress"
        proc = _start_bot_process(tmp_path, fake, endless_model)
        try:
            fake.wait_for_sync(lambda: INTERRUPTED_NOTE in (fake.messages(USER)[0].text or ""), timeout=60)
            fake.wait_for_sync(lambda: fake.messages(USER)[-1].text != texts.AFTER_YOUR_PREVIOUS, timeout=30)
            time.sleep(2.0)  # room for a wrong further answer to show up
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        fake.close()
    shown = fake.messages(USER)
    assert [m.message_id for m in shown[1:]] == [waiting.message_id]  # nothing else was sent
    assert shown[1].text == INTERRUPTED_NOTE  # in place of "I'll answer this right after your previous message"
    rows = asyncio.run(_rows(settings, chat_id=USER))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted")] * 2
    assert rows[3].telegram_message_id == waiting.message_id


def test_killed_again_before_the_restart_showed_its_note_the_next_start_shows_it(tmp_path, endless_model):
    """kill -9 mid-reply, then kill -9 again while the restart is about to show "interrupted" in that reply's
    message (before Telegram has it): the reply counts as interrupted only once that is shown, so the third start
    shows it, and the message is not left with its half-written text for good."""
    fake = FakeTelegram.start_in_thread()
    bot: dict = {"proc": None, "armed": False}

    def kill_before_the_note(params) -> None:
        if bot["armed"] and INTERRUPTED_NOTE in str(params.get("text")):
            bot["armed"] = False
            bot["proc"].send_signal(signal.SIGKILL)
            bot["proc"].wait(10)
            fake.fail_next("editMessageText", 500)  # the bot is gone: this edit is never carried out

    fake.before_call("editMessageText", kill_before_the_note)
    try:
        bot["proc"] = _start_bot_process(tmp_path, fake, endless_model)
        fake.send_user_message(USER, USER, "tell me a long story")
        fake.wait_for_sync(lambda: fake.messages(USER) and len(fake.messages(USER)[0].versions) >= 3, 60)
        bot["proc"].send_signal(signal.SIGKILL)
        bot["proc"].wait(10)
        half_written = fake.messages(USER)[0].text
        bot["armed"], bot["proc"] = True, _start_bot_process(tmp_path, fake, endless_model)
        fake.wait_for_sync(lambda: not bot["armed"] and bot["proc"].poll() is not None, 60)
        assert fake.messages(USER)[0].text == half_written, "the second start died before showing its note"
        bot["proc"] = _start_bot_process(tmp_path, fake, endless_model)
        try:
            fake.wait_for_sync(lambda: INTERRUPTED_NOTE in fake.messages(USER)[0].text, 60)
            time.sleep(2.0)  # room for a wrong further message to show up
        finally:
            bot["proc"].terminate()
            bot["proc"].wait(20)
    finally:
        if bot["proc"].poll() is None:
            bot["proc"].kill()
        fake.close()
    assert len(fake.messages(USER)) == 1
    rows = asyncio.run(_rows(bot_settings(tmp_path, fake, endless_model), chat_id=USER))
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "interrupted")]
    assert rows[1].text.endswith(INTERRUPTED_NOTE) and rows[1].text.count(INTERRUPTED_NOTE) == 1


async def test_settings_keyboard_marks_the_temperature_just_chosen(tmp_path, tiny_model):
    def marked(message) -> list[str]:
        return [b["text"] for row in message.reply_markup["inline_keyboard"] for b in row if b["text"].startswith("• ")]

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings):
            fake.send_user_message(USER, USER, "/settings")
            menu = await fake.wait_for(lambda: next((m for m in fake.messages(USER) if m.reply_markup), None),
                                       timeout=20)
            assert marked(menu) == [f"• {settings.model.temperature:g}"]
            fake.press_button(USER, USER, menu.message_id, "temp:1")
            menu = await fake.wait_for(lambda: next((m for m in fake.messages(USER) if m.message_id == menu.message_id
                                                     and marked(m) == ["• 1"]), None), timeout=20)
            assert "Temperature: 1\n" in menu.text
            fake.press_button(USER, USER, menu.message_id, "temp:1")  # again: nothing to change, still answered
            await fake.wait_for(lambda: len(fake.calls("answerCallbackQuery")) == 2, timeout=20)
        rows = await _rows(settings, model=ChatSettings, chat_id=USER)
        assert rows[0].temperature == 1.0


async def test_the_model_loads_at_start_up_and_a_message_meanwhile_is_told_to_wait(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        async with running_bot(settings) as app:  # nobody has written yet
            await fake.wait_for(lambda: app.bot_data["services"].models.loaded, timeout=30)
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path / "slow", fake, tiny_model)
        models = ModelManager(settings)
        await models._lock.acquire()  # the start-up load is held back, as a slow disk would
        async with running_bot(settings, models):
            fake.send_user_message(USER, USER, "hello")
            waiting = await fake.wait_for(lambda: fake.last_message(USER), timeout=20)
            assert waiting.text == "Starting up, one moment…"
            models._lock.release()
            reply = await fake.wait_for(lambda: final_reply(fake, USER), timeout=60)
            assert reply.message_id == waiting.message_id and reply.text != waiting.text
