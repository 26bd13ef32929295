"""Admin commands that fail say what is wrong in an admin's terms (no paths, no exception text) and log the
detail: /rollback to a version whose files are gone or damaged, or to an id no database could hold; an id in
other than ASCII digits is not read as a number."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
ADMIN = 4343


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


async def _add_versions(settings, gone: Path, damaged: Path) -> None:
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            await training_db.add_version(s, name="run-1", base="tiny", path=str(gone))
            await training_db.add_version(s, name="run-2", base="tiny", path=str(damaged))
    finally:
        await engine.dispose()


async def test_rollback_failures_are_explained_without_internals(tmp_path, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    gone, damaged = tmp_path / "srv" / "versions" / "run-1", tmp_path / "srv" / "versions" / "run-2"
    damaged.mkdir(parents=True)
    (damaged / "config.json").write_text("{not json")
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        await _add_versions(settings, gone, damaged)
        async with running_bot(settings):
            async def rollback(arg: str) -> str:
                before = len(fake.messages(ADMIN))
                fake.send_user_message(ADMIN, ADMIN, f"/rollback {arg}")
                return (await fake.wait_for(lambda: fake.messages(ADMIN)[before:], 60))[0].text

            missing = await rollback("1")
            damaged_reply = await rollback("2")
            huge = await rollback("99999999999999999999")
            arabic = await rollback("١")  # Arabic-Indic one: int() reads it as 1
            superscript = await rollback("²")  # str.isdigit() says yes, int() raises
    assert missing.startswith("Version #1's files are missing on the server") and "srv" not in missing
    assert damaged_reply.startswith("Version #2 could not be loaded") and "json" not in damaged_reply.lower()
    assert "line 1" not in damaged_reply and "Error" not in damaged_reply
    assert huge == "There is no model version 99999999999999999999. See /models."
    assert arabic == superscript == "Usage: /rollback ID (see /models) or /rollback base"
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert str(gone) in logged  # the detail an operator needs is in the log
    assert any(r.exc_info and "version 2" in r.getMessage() for r in caplog.records)


async def _command(fake: FakeTelegram, chat: int, text: str, expect: str, timeout: float = 60):
    """Send a command and wait for a bot message (new or edited) containing `expect`."""
    before = len(fake.messages(chat))
    fake.send_user_message(chat, chat, text)
    return await fake.wait_for(lambda: next((m for m in fake.messages(chat)[before:] if expect in m.text), None),
                               timeout=timeout)


async def test_retrain_failures_are_explained_without_internals(tmp_path, tiny_model, caplog):
    damaged = tmp_path / "srv" / "base"
    damaged.mkdir(parents=True)
    (damaged / "config.json").write_text("{not json")
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path / "a", fake, damaged, admins=[ADMIN])
        async with running_bot(settings):  # the base model's tokenizer cannot be read: no plan
            shown = await _command(fake, ADMIN, "/retrain", "could not prepare a training run")
        assert "json" not in shown.text.lower() and "srv" not in shown.text and "line 1" not in shown.text

        settings = bot_settings(tmp_path / "b", fake, tiny_model, admins=[ADMIN])
        settings.training.use_chats_by_default = True
        settings.training.min_examples = 2  # a plan needs at least this many examples to offer Start
        async with running_bot(settings):  # a plan, but its data cannot be written: no run
            fake.send_user_message(ADMIN, ADMIN, "hello there")  # two conversations: two training examples
            await fake.wait_for(lambda: final_reply(fake, ADMIN), 60)
            await _command(fake, ADMIN, "/reset", "Started a new conversation")
            fake.send_user_message(ADMIN, ADMIN, "what is a fox?")
            await fake.wait_for(lambda: final_reply(fake, ADMIN, after=1), 60)
            plan = await _command(fake, ADMIN, "/retrain", "Retraining plan")  # its timed steps use runs/
            runs = settings.data_dir / "runs"
            shutil.rmtree(runs)
            runs.write_text("in the way")  # the run's folder cannot be made
            start = next(b["callback_data"] for row in plan.reply_markup["inline_keyboard"] for b in row
                         if b["callback_data"].startswith("train:start:"))
            fake.press_button(ADMIN, ADMIN, plan.message_id, start)
            await fake.wait_for(lambda: "could not start" in next(
                m.text for m in fake.messages(ADMIN) if m.message_id == plan.message_id), 30)
        failed = next(m.text for m in fake.messages(ADMIN) if m.message_id == plan.message_id)
    assert failed.startswith("The training run could not start") and "runs" not in failed and "Errno" not in failed
    assert any(r.exc_info and "could not start a training run" in r.getMessage() for r in caplog.records)
