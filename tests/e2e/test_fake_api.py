"""The real python-telegram-bot (Bot, Application) against the fake Telegram Bot API over real HTTP, and
bot.telegram.live_messages.StreamingMessage end to end on top of it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import urllib.request
import warnings
from datetime import timedelta

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, RetryAfter
from telegram.ext import Application, CommandHandler, ContextTypes, MessageHandler, filters

from bot.telegram.live_messages import StreamingMessage
from bot.telegram.render import markdown_to_telegram_html
from tests.support.fake_telegram import FakeTelegram, parse_telegram_html

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TOKEN = "123456:SECRET-token-never-logged"
CHAT = 4242


@pytest.fixture
async def fake():
    async with FakeTelegram(token=TOKEN) as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram):
    async with Bot(TOKEN, base_url=fake.base_url, base_file_url=fake.base_file_url) as b:
        yield b


def _retry_after(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22.2+ warns that the int becomes a timedelta
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


# ------------------------------------------------------------------------------------------ the fake itself


async def test_send_and_edit_keep_history(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    sent = await bot.send_message(CHAT, "<b>Hello</b> &amp; welcome", parse_mode=ParseMode.HTML)
    assert sent.text == "Hello & welcome" and sent.from_user.id == 123456
    assert sent.entities[0].type == "bold" and sent.entities[0].length == 5
    await bot.edit_message_text("second", chat_id=CHAT, message_id=sent.message_id)
    edited = await bot.edit_message_text("<i>third</i>", chat_id=CHAT, message_id=sent.message_id,
                                         parse_mode=ParseMode.HTML)
    assert edited.text == "third" and edited.edit_date is not None

    [msg] = fake.messages(CHAT)
    assert msg.texts == ["Hello & welcome", "second", "third"]
    assert msg.edits == 2 and msg.parse_mode == "HTML" and msg.html == "<i>third</i>"
    assert msg.times == sorted(msg.times)
    assert fake.last_text(CHAT) == "third"
    assert [c.status for c in fake.calls("editMessageText")] == [200, 200]


async def test_bad_requests_like_telegram(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    sent = await bot.send_message(CHAT, "same")
    with pytest.raises(BadRequest, match="(?i)not modified"):
        await bot.edit_message_text("same", chat_id=CHAT, message_id=sent.message_id)
    with pytest.raises(BadRequest, match="(?i)message to edit not found"):
        await bot.edit_message_text("x", chat_id=CHAT, message_id=999)
    with pytest.raises(BadRequest, match="[Cc]hat not found"):
        await bot.send_message(777, "nobody here")
    with pytest.raises(BadRequest, match="[Mm]essage text is empty"):
        await bot.send_message(CHAT, "   ")
    # a new reply markup on the same text is a modification
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("ok", callback_data="ok")]])
    await bot.edit_message_reply_markup(chat_id=CHAT, message_id=sent.message_id, reply_markup=markup)
    assert fake.messages(CHAT)[0].reply_markup == markup.to_dict()
    await bot.delete_message(CHAT, sent.message_id)
    assert fake.messages(CHAT) == [] and fake.messages(CHAT, include_deleted=True)[0].deleted
    with pytest.raises(BadRequest, match="(?i)message to delete not found"):
        await bot.delete_message(CHAT, sent.message_id)


async def test_invalid_html_is_rejected_and_nothing_is_sent(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    for bad in ["<b>unclosed", "1 < 2", "Tom & Jerry", "<br>", "<b><i>x</b></i>", '<span class="x">s</span>']:
        with pytest.raises(BadRequest, match="(?i)can't parse entities"):
            await bot.send_message(CHAT, bad, parse_mode=ParseMode.HTML)
    assert fake.messages(CHAT) == []
    ok = await bot.send_message(CHAT, '<pre><code class="language-py">a &lt; b</code></pre>',
                                parse_mode=ParseMode.HTML)
    assert ok.text == "a < b" and ok.entities[0].type == "pre" and ok.entities[0].language == "py"


async def test_length_limit_counts_utf16_after_parsing(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    await bot.send_message(CHAT, "😀" * 2048)  # 4096 UTF-16 units: the most Telegram takes
    with pytest.raises(BadRequest, match="(?i)message is too long"):
        await bot.send_message(CHAT, "😀" * 2048 + "a")
    with pytest.raises(BadRequest, match="(?i)message is too long"):
        await bot.send_message(CHAT, "a" * 4097)
    # tags do not count, only the text they leave
    await bot.send_message(CHAT, "<b>" + "a" * 4096 + "</b>", parse_mode=ParseMode.HTML)
    assert len(fake.messages(CHAT)) == 2


async def test_flood_control_raises_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    fake.fail_next("sendMessage", status=429, retry_after=7)
    with pytest.raises(RetryAfter) as info:
        await bot.send_message(CHAT, "too fast")
    assert _retry_after(info.value) == 7
    assert (await bot.send_message(CHAT, "later")).text == "later"  # the fault was for one call only
    assert [c.status for c in fake.calls("sendMessage")] == [429, 200]

    fake.fail_next("sendChatAction", status=403, description="Forbidden: bot was blocked by the user")
    with pytest.raises(Exception, match="blocked"):
        await bot.send_chat_action(CHAT, "typing")
    assert await bot.send_chat_action(CHAT, "typing") is True


async def test_file_download_round_trip_and_upload(fake: FakeTelegram, bot: Bot) -> None:
    data = bytes(range(256)) * 100
    fake.send_user_document(CHAT, 7, "report.pdf", data, "application/pdf", caption="read this")
    [update] = await bot.get_updates(timeout=1)
    doc = update.message.document
    assert (doc.file_name, doc.mime_type, doc.file_size) == ("report.pdf", "application/pdf", len(data))
    assert update.message.caption == "read this"
    file = await bot.get_file(doc.file_id)
    assert bytes(await file.download_as_bytearray()) == data

    fake.max_download_bytes = 1000  # like Telegram's 20 MB limit, scaled down
    with pytest.raises(BadRequest, match="(?i)file is too big"):
        await bot.get_file(doc.file_id)

    sent = await bot.send_document(CHAT, io.BytesIO(b"summary bytes"), filename="summary.txt",
                                   caption="<b>done</b>", parse_mode=ParseMode.HTML)
    assert sent.document.file_name == "summary.txt" and sent.caption == "done"
    photo = await bot.send_photo(CHAT, io.BytesIO(b"\x89PNG fake"), caption="chart")
    stored = fake.messages(CHAT)
    assert [m.kind for m in stored] == ["document", "photo"]
    assert stored[0].file.data == b"summary bytes" and stored[1].file.data == b"\x89PNG fake"
    assert photo.photo[0].file_size == len(b"\x89PNG fake")


async def test_get_updates_long_polls_and_confirms(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0.3)
    assert not poll.done()  # a real long poll: it waits for something to arrive
    update_id = fake.send_user_message(CHAT, 7, "/start@docent_test_bot hi @someone_else")
    [update] = await asyncio.wait_for(poll, 5)
    assert update.update_id == update_id
    entities = [(e.type, update.message.parse_entity(e)) for e in update.message.entities]
    assert entities == [("bot_command", "/start@docent_test_bot"), ("mention", "@someone_else")]
    assert update.message.chat.type == "private" and update.message.from_user.id == 7

    assert await bot.get_updates(offset=update_id + 1, timeout=0) == ()  # confirmed, gone
    assert fake.pending_updates() == []

    # allowed_updates: a callback query the bot did not ask for is dropped
    sent = await bot.send_message(CHAT, "pick", reply_markup=InlineKeyboardMarkup(
        [[InlineKeyboardButton("A", callback_data="a")]]))
    fake.press_button(CHAT, 7, sent.message_id, "a")
    fake.send_user_message(CHAT, 7, "text")
    updates = await bot.get_updates(timeout=1, allowed_updates=["message"])
    assert [u.message.text for u in updates] == ["text"]


async def test_callback_query_and_commands(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    sent = await bot.send_message(CHAT, "pick", reply_markup=InlineKeyboardMarkup(
        [[InlineKeyboardButton("A", callback_data="choice:a")]]))
    fake.press_button(CHAT, 7, sent.message_id, "choice:a")
    [update] = await bot.get_updates(timeout=1)
    assert update.callback_query.data == "choice:a"
    assert update.callback_query.message.message_id == sent.message_id
    assert await bot.answer_callback_query(update.callback_query.id, text="ok")
    with pytest.raises(BadRequest, match="(?i)query is too old"):
        await bot.answer_callback_query(update.callback_query.id)

    await bot.set_my_commands([("ask", "Ask about your documents"), ("help", "How to use me")])
    assert [c.command for c in await bot.get_my_commands()] == ["ask", "help"]
    with pytest.raises(BadRequest):
        await bot.set_my_commands([("Bad-Command", "no")])


async def test_application_receives_messages_by_long_polling(fake: FakeTelegram) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text("welcome")

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(f"echo: {update.message.text}")

    app = Application.builder().token(TOKEN).base_url(fake.base_url).base_file_url(fake.base_file_url).build()
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with app:
        await app.start()
        await app.updater.start_polling(timeout=5, poll_interval=0)
        fake.send_user_message(CHAT, 7, "/start")
        await fake.wait_for(lambda: fake.last_text(CHAT) == "welcome", timeout=10)
        fake.send_user_message(CHAT, 7, "hello <there> & co")
        await fake.wait_for(lambda: fake.last_text(CHAT) == "echo: hello <there> & co", timeout=10)
        await app.updater.stop()
        await app.stop()
    assert [m.text for m in fake.messages(CHAT)] == ["welcome", "echo: hello <there> & co"]
    assert any(c.params.get("timeout") == 5 for c in fake.calls("getUpdates"))  # long polls, not busy polling
    assert fake.calls("deleteWebhook")  # PTB clears the webhook before polling


def test_start_in_thread_serves_synchronous_clients() -> None:
    with FakeTelegram.start_in_thread(token=TOKEN) as fake:
        fake.send_user_message(CHAT, 7, "from a thread")

        def call(method: str, **params: object) -> dict:
            req = urllib.request.Request(f"{fake.base_url}{TOKEN}/{method}", data=json.dumps(params).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        assert call("getMe")["result"]["username"] == "docent_test_bot"
        [update] = call("getUpdates", timeout=1)["result"]
        assert update["message"]["text"] == "from a thread"
        assert call("sendMessage", chat_id=CHAT, text="reply")["result"]["text"] == "reply"
        assert fake.last_text(CHAT) == "reply"


# ------------------------------------------------------------------------------------ StreamingMessage


def _plain(md: str) -> str:
    return parse_telegram_html(markdown_to_telegram_html(md))[0]


async def test_streaming_throttles_edits_and_formats_the_final_text(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_user_message(CHAT, 7, "tell me")
    question_id = fake.user_messages(CHAT)[-1].message_id
    stream = StreamingMessage(bot, CHAT, min_interval=1.0, reply_to_message_id=question_id)
    await stream.start("…")
    text = ""
    for n in range(20):  # 20 chunks over ~1.5 s
        text += f"word{n} **bold** "
        await stream.update(text)
        await asyncio.sleep(0.075)
    final = text + "\n\n```python\nprint(1 < 2)\n```"
    [message] = await stream.finish(final)

    [stored] = fake.messages(CHAT)
    intermediate = stored.versions[1:-1]
    assert 1 <= len(intermediate) <= 3 and stream.edits == len(intermediate)  # far fewer than 20
    assert all(v.parse_mode is None for v in intermediate)  # plain text while streaming
    assert all(b.at - a.at >= 0.8 for a, b in zip(stored.versions, stored.versions[1:-1], strict=False))
    assert stored.parse_mode == "HTML" and stored.text == _plain(final)
    assert "**" not in stored.text and "```" not in stored.text
    assert any(e["type"] == "bold" for e in stored.versions[-1].entities)
    assert message.message_id == stored.message_id and stored.reply_to_message_id == question_id


async def test_final_text_survives_flood_control(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    stream = StreamingMessage(bot, CHAT, min_interval=1.0)
    await stream.start()
    fake.fail_next("editMessageText", status=429, retry_after=1)
    await stream.finish("the **answer**")
    assert [c.status for c in fake.calls("editMessageText")] == [429, 200]
    assert fake.last_text(CHAT) == "the answer" and fake.messages(CHAT)[0].parse_mode == "HTML"


async def test_intermediate_flood_control_pauses_edits(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    stream = StreamingMessage(bot, CHAT, min_interval=0.0)
    await stream.start()
    fake.fail_next("editMessageText", status=429, retry_after=30)
    assert await stream.update("one") is False
    assert await stream.update("one two") is False  # paused: no request at all
    assert len(fake.calls("editMessageText")) == 1
    await stream.finish("one two three")  # the final text does not wait for the pause of the previews
    assert fake.last_text(CHAT) == "one two three"


async def test_refused_html_falls_back_to_plain_text(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    stream = StreamingMessage(bot, CHAT, min_interval=1.0)
    await stream.start()
    fake.fail_next("editMessageText", status=400, description="Bad Request: can't parse entities: injected")
    await stream.finish("**bold** <tag>")
    stored = fake.messages(CHAT)[0]
    assert stored.text == "**bold** <tag>" and stored.parse_mode is None


async def test_long_reply_is_split_over_messages(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT, "supergroup", title="team")
    stream = StreamingMessage(bot, CHAT, min_interval=3.0, message_thread_id=5)
    await stream.start()
    await stream.update("x" * 5000)  # too early: nothing
    paragraphs = [f"Paragraph {i}: " + " ".join(f"w{i}_{j}" for j in range(80)) for i in range(12)]
    final = "\n\n".join(paragraphs)
    assert 5500 < len(final) < 7000
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("more", callback_data="more")]])
    sent = await stream.finish(final, reply_markup=markup)

    stored = fake.messages(CHAT)
    assert len(sent) == len(stored) == 2
    assert stored[0].edits == 1 and stored[1].edits == 0  # part 1 replaced the placeholder
    assert stored[0].reply_markup is None and stored[1].reply_markup == markup.to_dict()
    assert stored[1].message_thread_id == 5
    together = stored[0].text + "\n\n" + stored[1].text
    assert together.split() == final.split()


async def test_deleted_stream_message_gets_a_new_message(fake: FakeTelegram, bot: Bot) -> None:
    fake.add_chat(CHAT)
    stream = StreamingMessage(bot, CHAT, min_interval=0.0)
    first = await stream.start()
    await bot.delete_message(CHAT, first.message_id)  # the user deleted it meanwhile
    assert await stream.update("partial") is False
    [message] = await stream.finish("final")
    assert message.message_id != first.message_id and fake.last_text(CHAT) == "final"


async def test_render_logs_never_contain_the_token(fake: FakeTelegram, bot: Bot,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_chat(CHAT)
    stream = StreamingMessage(bot, CHAT, min_interval=0.0)
    await stream.start()
    fake.fail_next("editMessageText", status=429, retry_after=30)
    await stream.update("x")
    fake.fail_next("editMessageText", status=400, description="Bad Request: can't parse entities: x")
    await stream.finish("y")
    ours = [r for r in caplog.records if r.name.startswith(("bot.", "aiohttp", "tests."))]
    assert ours and not any(re.search("SECRET", r.getMessage()) for r in ours)
