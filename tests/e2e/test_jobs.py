"""Long jobs through Telegram: /cancel stops an upload while it is being embedded, kill -9 during one leaves a
status line that the next start corrects, SIGTERM during one stops it within seconds with a note, and a reply
whose model never loaded is stored as failed rather than left without a row. Real MiniLM encoder (the
upload is large enough to take a while to embed), tiny random chat model."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.support.bot_harness import bot_settings, running_bot, start_bot_process
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
ANN = 2301
# about 200 KB of distinct sentences: tens of seconds of embedding on two cores, so a job is caught mid-way
LEDGER = "\n\n".join(" ".join(f"Shipment {i}-{k} left port {(i * 7 + k) % 13} on day {(i + k) % 28} carrying "
                              f"{(i * 31 + k) % 900} crates of item {(i * 17 + k) % 251}." for k in range(8))
                     for i in range(400)).encode()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=1024).path


def _statuses(fake: FakeTelegram, chat: int) -> list:
    """The bot's status lines for uploads of ledger.txt, oldest first."""
    return [m for m in fake.messages(chat) if m.from_bot and m.texts[0].startswith("Indexing ledger.txt")]


def _status(fake: FakeTelegram, chat: int):
    return next(iter(_statuses(fake, chat)), None)


def _embedding(fake: FakeTelegram, chat: int) -> bool:
    status = _status(fake, chat)
    return status is not None and "embedding" in status.text


async def test_cancel_stops_an_upload_mid_embedding_and_nothing_is_stored(tmp_path, tiny_model):
    from bot.config import env_cache_dir

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.cache_dir = env_cache_dir()  # the real encoder, pulled once for the whole suite
        async with running_bot(settings):
            fake.send_user_message(ANN, ANN, "/cancel")
            await fake.wait_for(lambda: fake.last_text(ANN) == "Nothing of yours is running here: no reply, summary or upload.", 30)
            fake.send_user_document(ANN, ANN, "ledger.txt", LEDGER, "text/plain")
            await fake.wait_for(lambda: _embedding(fake, ANN), 120)
            fake.send_user_message(ANN, ANN, "/cancel")
            await fake.wait_for(lambda: _status(fake, ANN).text == "Indexing ledger.txt was cancelled. Nothing was stored.", 30)
            # "Stopping…" goes out before the status line says the job was cancelled, and is edited after it
            note = await fake.wait_for(lambda: next((m for m in fake.messages(ANN) if m.texts == [
                "Stopping indexing ledger.txt…", "Stopped indexing ledger.txt."]), None), 30)
            status = _status(fake, ANN)
            assert note.versions[0].at < status.versions[-1].at < note.versions[-1].at
            fake.send_user_message(ANN, ANN, "/docs")
            await fake.wait_for(lambda: fake.last_text(ANN).startswith("No documents yet"), 30)


async def test_summarize_and_forget_of_an_upload_still_being_indexed_say_so_and_forget_stops_it(tmp_path, tiny_model):
    from bot.config import env_cache_dir

    def said(text: str):
        return next((m for m in fake.messages(ANN) if m.text == text), None)

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model)
        settings.cache_dir = env_cache_dir()
        async with running_bot(settings):
            fake.send_user_document(ANN, ANN, "ledger.txt", LEDGER, "text/plain")
            await fake.wait_for(lambda: _embedding(fake, ANN), 120)
            fake.send_user_message(ANN, ANN, "/summarize ledger.txt")
            await fake.wait_for(lambda: said("ledger.txt is still being indexed. Send /summarize again once it is "
                                             "indexed."), 30)
            fake.send_user_message(ANN, ANN, "/forget ledger.txt")
            reply = await fake.wait_for(lambda: said("ledger.txt was still being indexed: I stopped indexing it, and "
                                                     "nothing of it is stored."), 60)
            assert reply.texts[0] == "ledger.txt is still being indexed. Stopping it…"
            assert _status(fake, ANN).text == "Indexing ledger.txt was cancelled. Nothing was stored."
            fake.send_user_message(ANN, ANN, "/docs")
            await fake.wait_for(lambda: fake.last_text(ANN).startswith("No documents yet"), 30)


async def test_a_reply_whose_model_cannot_load_is_stored_as_failed(tmp_path):
    from sqlalchemy import select

    from bot.db.session import create_engine, session_factory
    from bot.db.tables import Message

    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tmp_path / "no-such-model.gguf")
        async with running_bot(settings):
            fake.send_user_message(ANN, ANN, "hello?")
            await fake.wait_for(lambda: "could not be loaded" in (fake.last_text(ANN) or ""), 60)
        engine = create_engine(settings.database_url)
        async with session_factory(engine)() as s:
            rows = list(await s.scalars(select(Message).order_by(Message.id)))
        await engine.dispose()
    # the reply row is written before the model loads: a restart while it loads finds it (and marks it)
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "failed")]
    assert rows[1].telegram_message_id == fake.messages(ANN)[-1].message_id


def _start(tmp_path: Path, fake: FakeTelegram, model: Path):
    from bot.config import env_cache_dir

    # small chunks: the upload is stored in several batches, so a kill can come after some are in SQL
    return start_bot_process(tmp_path, fake, model, DOCENT_CACHE_DIR=str(env_cache_dir()),
                             DOCENT_DOCUMENTS_CHUNK_TOKENS="48", DOCENT_DOCUMENTS_CHUNK_OVERLAP_TOKENS="8")


def _stored(tmp_path: Path) -> tuple[int, int]:
    """(documents, chunks) in the bot process's SQLite database, read as another process would."""
    import sqlite3

    db = tmp_path / "data" / "docent.db"
    if not db.exists():
        return 0, 0
    with sqlite3.connect(db) as con:
        try:
            return (con.execute("SELECT count(*) FROM documents").fetchone()[0],
                    con.execute("SELECT count(*) FROM chunks").fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet
            return 0, 0


def test_kill_9_mid_upload_is_reported_on_restart_and_sigterm_stops_an_upload_within_seconds(tmp_path, tiny_model):
    fake = FakeTelegram.start_in_thread()
    try:
        proc = _start(tmp_path, fake, tiny_model)
        try:
            fake.send_user_document(ANN, ANN, "ledger.txt", LEDGER, "text/plain")
            fake.wait_for_sync(lambda: _stored(tmp_path)[1] > 0, 120)  # a batch of chunks is in SQL
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        first = _status(fake, ANN)
        assert "embedding" in first.text, "killed mid-way: the status line still shows progress"
        assert _stored(tmp_path)[0] == 1
        proc = _start(tmp_path, fake, tiny_model)
        try:
            fake.wait_for_sync(lambda: _status(fake, ANN).text.startswith(
                "⚠️ Indexing ledger.txt was interrupted by a restart."), 60)
            assert _stored(tmp_path) == (0, 0), "the half-indexed upload was deleted at the start"
            fake.send_user_document(ANN, ANN, "ledger.txt", LEDGER + b"\n\nOne more line.", "text/plain")
            fake.wait_for_sync(lambda: _stored(tmp_path)[1] > 0, 120)
            assert len(_statuses(fake, ANN)) == 2
            proc.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            proc.wait(30)
            stopped_after = time.monotonic() - asked
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        fake.close()
    second = _statuses(fake, ANN)[-1]
    assert proc.returncode == 0
    assert second.text.startswith("⚠️ Indexing ledger.txt was stopped: I am restarting."), second.text
    assert stopped_after < 15, "stopped within seconds, not after the whole embedding"
    log_text = (tmp_path / "bot.log").read_text()
    assert "asked to stop" in log_text
    assert asyncio.run(_documents(tmp_path)) == 0, "neither upload stored anything"
    assert _stored(tmp_path) == (0, 0), "the stopped upload deleted its stored batches"


async def _documents(tmp_path: Path) -> int:
    from sqlalchemy import func, select

    from bot.config import Settings
    from bot.db.session import create_engine, session_factory
    from bot.db.tables import Document

    engine = create_engine(Settings(data_dir=tmp_path / "data").database_url)  # the bot process's database
    async with session_factory(engine)() as s:
        n = await s.scalar(select(func.count()).select_from(Document))
    await engine.dispose()
    return n


def test_killed_as_an_uploads_status_line_is_sent_the_restart_tells_its_user(tmp_path, tiny_model):
    """kill -9 as the upload's "Indexing …" line is about to be sent (Telegram never gets it): the job's row was
    stored first, so the restart tells the user, in a new message, that the upload was interrupted. (Sent before
    the row, the line was left on screen for good when the process died in between, and the upload was lost
    without a word, its update acknowledged.)"""
    fake = FakeTelegram.start_in_thread()
    bot: dict = {"proc": None, "armed": True}

    def kill_before_the_status_line(params) -> None:
        if bot["armed"] and str(params.get("text")).startswith("Indexing ledger.txt"):
            bot["armed"] = False
            bot["proc"].send_signal(signal.SIGKILL)
            bot["proc"].wait(10)
            fake.fail_next("sendMessage", 500)  # the bot is gone: this message is never sent

    fake.before_call("sendMessage", kill_before_the_status_line)
    try:
        bot["proc"] = _start(tmp_path, fake, tiny_model)
        fake.send_user_document(ANN, ANN, "ledger.txt", LEDGER, "text/plain")
        fake.wait_for_sync(lambda: not bot["armed"] and bot["proc"].poll() is not None, 60)
        assert not [m for m in fake.messages(ANN) if m.from_bot]
        bot["proc"] = _start(tmp_path, fake, tiny_model)
        try:
            told = fake.wait_for_sync(lambda: [m for m in fake.messages(ANN) if m.from_bot], 60)
            time.sleep(2.0)  # room for a wrong further message to show up
        finally:
            bot["proc"].terminate()
            bot["proc"].wait(20)
    finally:
        if bot["proc"].poll() is None:
            bot["proc"].kill()
        fake.close()
    assert [m.text for m in fake.messages(ANN) if m.from_bot] == [told[0].text]
    assert told[0].text.startswith("⚠️ Indexing ledger.txt was interrupted by a restart.")
