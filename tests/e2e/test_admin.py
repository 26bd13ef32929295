"""Retraining from Telegram, end to end: the real Application against the fake Bot API, a tiny random GGUF
model, real SQLite, and a real `python -m lm.train` child training LoRA for a handful of steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db import chat_queries, message_queries
from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from bot.db.tables import ModelVersion, TrainingRun
from bot.services.training.plan import TrainingOptions
from tests.support.bot_harness import bot_settings, final_reply, running_bot
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
ADMIN, USER = 4242, 1001
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", max_seq_len=4096).path


def small(**more) -> TrainingOptions:
    """Options for the tiny model: a run on the few examples of a test sized as /retrain sizes any run."""
    return TrainingOptions(**{"lora_rank": 4, "lora_alpha": 8.0, "learning_rate": 1e-2, "batch_size": 2,
                              "block_size": 128, "eval_batches": 2, "threads": 1, "min_examples": 2, **more})


async def _count(settings, model) -> int:
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            return await s.scalar(select(func.count()).select_from(model))
    finally:
        await engine.dispose()


async def _one(settings, fn):
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as s:
            return await fn(s)
    finally:
        await engine.dispose()


def _button(message, prefix: str) -> str:
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return next(b["callback_data"] for row in rows for b in row if b["callback_data"].startswith(prefix))


async def _command(fake: FakeTelegram, chat: int, text: str, expect: str, timeout: float = 20):
    """Send a command and wait for a bot message (new or edited) containing `expect`."""
    before = len(fake.messages(chat))
    fake.send_user_message(chat, chat, text)
    return await fake.wait_for(lambda: next((m for m in fake.messages(chat)[before:] if expect in m.text), None),
                               timeout=timeout)


async def test_non_admin_is_refused_and_nothing_happens(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        async with running_bot(settings) as app:
            for command in ("/retrain", "/retrain force", "/train_cancel", "/rollback base", "/models"):
                await _command(fake, USER, command, "Only the bot's admins")
            services = app.bot_data["services"]
            # the chat model loads at start-up anyway (warm-up); what must not happen is a switch of version
            assert services.models._current is None or services.models._current.version_id is None
            assert not services.training.busy
        assert await _count(settings, TrainingRun) == 0
        assert await _count(settings, ModelVersion) == 0
        assert not (settings.data_dir / "runs").exists()


async def test_admin_retrains_on_rated_chats_promotes_lists_and_rolls_back(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        settings.model.repetition_penalty = 1.0  # sampling is not under test here; keep replies simple
        async with running_bot(settings) as app:
            services = app.bot_data["services"]
            service = services.training
            service.options = small()  # 3 epochs, at most 200 steps
            await _command(fake, USER, "/training on", "may now be used")
            for i, text in enumerate(["hello there", "what is a fox?", "tell me about dogs"]):
                fake.send_user_message(USER, USER, text)
                await fake.wait_for(lambda i=i: final_reply(fake, USER, after=i), timeout=60)
            replies = [m for m in fake.messages(USER) if m.reply_markup and "fb:1" in str(m.reply_markup)]
            fake.press_button(USER, USER, replies[0].message_id, "fb:1")
            fake.press_button(USER, USER, replies[1].message_id, "fb:-1")
            await fake.wait_for(lambda: len([c for c in fake.calls("answerCallbackQuery")]) >= 2, timeout=10)

            plan = await _command(fake, ADMIN, "/retrain force", "Retraining plan", timeout=60)
            assert "1 rated 👍 first; 1 rated 👎 left out" in plan.text
            # two examples (the 👎 cut the conversation in two): one to train on, one held out; a plan that fits
            assert "Examples: 2 (1 held out" in plan.text, plan.text
            assert "3 steps × batch 1 ≈ 3 epochs over the 1 training example," in plan.text, plan.text
            assert "timed on 3 training steps of this data just now" in plan.text, plan.text
            assert await _count(settings, TrainingRun) == 0  # a plan writes nothing
            fake.press_button(ADMIN, ADMIN, plan.message_id, _button(plan, "train:start:"))
            photo = await fake.wait_for(lambda: next((m for m in fake.messages(ADMIN) if m.kind == "photo"), None),
                                        timeout=240)
            status = next(m for m in fake.messages(ADMIN) if m.message_id == plan.message_id)
            assert any("step " in t and "ETA" in t for t in status.texts), status.texts  # edited while training
            assert "finished" in status.text and "is now the active model" in status.text, status.text
            assert "(step 3/3)" in status.text  # the run trained as the plan said
            assert photo.file.data[:8] == PNG_MAGIC

            version = await _one(settings, training_db.active_version)
            run = (await _one(settings, training_db.list_runs))[0]
            assert run.status == "succeeded" and run.result_version_id == version.id
            assert run.heldout_loss_before is not None and run.heldout_loss_after is not None
            assert (Path(version.path) / "adapter_config.json").is_file()
            assert (await services.models.current()).version_id == version.id  # swapped without a restart
            data = [json.loads(line) for line in
                    (settings.data_dir / "runs" / str(run.id) / "data.jsonl").read_text().splitlines()]
            stored_replies = [m["content"] for d in data for m in d["messages"] if m["role"] == "assistant"]
            assert len(stored_replies) == 2  # the 👎 reply was left out

            listing = await _command(fake, ADMIN, "/models", "Model versions")
            assert f"#{version.id} run-{run.id}" in listing.text and "✅ active" in listing.text.split("\n")[2]

            await _command(fake, ADMIN, "/rollback base", "configured base model")
            assert await _one(settings, training_db.active_version) is None
            assert (await services.models.current()).version_id is None
            await _command(fake, ADMIN, "/rollback 999", "no model version 999")
            await _command(fake, ADMIN, f"/rollback {version.id}", f"Now serving version #{version.id}")
            assert (await services.models.current()).version_id == version.id
            fake.send_user_message(USER, USER, "still there?")  # the new version answers
            await fake.wait_for(lambda: final_reply(fake, USER, after=3), timeout=60)

        # a restarted bot serves the active version from SQL, not the configured model
        async with running_bot(settings) as app:
            services = app.bot_data["services"]
            restored = await services.training.restore_active_model()
            assert restored is not None and restored.id == version.id
            assert (await services.models.current()).version_id == version.id


async def _seed_conversations(settings, n: int) -> None:
    """n finished exchanges of USER, each its own conversation, stored earlier (no chatting through the model)."""
    settings.data_dir.mkdir(parents=True)
    await upgrade(settings.database_url)

    async def seed(s):
        await chat_queries.ensure_user_and_chat(s, USER, "private", USER, "u", "U")
        for i in range(n):
            user = await message_queries.record_update_and_user_message(s, 900 + i, USER, USER, f"question {i}", 900 + i)
            await message_queries.add_assistant_message(s, user.conversation_id, USER, f"The quick brown fox {i}.",
                                                        status="complete", telegram_message_id=2000 + i)
            await chat_queries.start_new_conversation(s, USER)

    await _one(settings, seed)


async def test_too_little_data_gets_a_plan_that_says_so_without_a_start_button(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        await _seed_conversations(settings, 3)
        async with running_bot(settings) as app:
            service = app.bot_data["services"].training
            service.options = small(min_examples=5, use_chats_by_default=True)
            plan = await _command(fake, ADMIN, "/retrain", "Retraining plan")
            assert "Conversations: 3 from 1 opted-in chat(s)" in plan.text, plan.text
            assert "Not enough data to train on yet: 3 examples, and a run needs at least 5" in plan.text
            assert not plan.reply_markup and "Estimated time" not in plan.text
            await _command(fake, ADMIN, "/train_cancel", "No training run is in progress and no plan is open")
        assert await _count(settings, TrainingRun) == 0
        assert not (settings.data_dir / "runs").exists()  # nothing was exported or timed


async def test_retrain_shows_the_steps_being_timed_and_says_what_the_estimate_is_based_on(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        await _seed_conversations(settings, 6)
        async with running_bot(settings) as app:
            app.bot_data["services"].training.options = small(use_chats_by_default=True)
            plan = await _command(fake, ADMIN, "/retrain", "Retraining plan", timeout=120)
    timing = [t for t in plan.texts if "timing 3 training steps on this data" in t]
    assert timing, plan.texts  # edited while the child timed its steps, not one static line for minutes
    assert plan.texts.index(timing[0]) < len(plan.texts) - 1
    assert "timed on 3 training steps of this data just now" in plan.text, plan.text
    assert "while I was writing" not in plan.text  # nothing competed with the timing: no caveat


async def test_cancel_stops_the_run_resumably_and_keeps_the_active_model(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        await _seed_conversations(settings, 6)
        async with running_bot(settings) as app:
            services = app.bot_data["services"]
            service = services.training
            # USER never said /training on; epochs enough that the run is still going when it is cancelled
            service.options = small(epochs=1000, max_steps=400, use_chats_by_default=True)
            plan = await _command(fake, ADMIN, "/retrain", "Retraining plan", timeout=60)
            assert "400 steps × batch 2" in plan.text and "capped at max_steps 400" in plan.text, plan.text
            fake.press_button(ADMIN, ADMIN, plan.message_id, _button(plan, "train:start:"))
            await fake.wait_for(lambda: service.job is not None and service.job.last.get("step"), timeout=120)
            await _command(fake, ADMIN, "/train_status", "step ")
            await _command(fake, ADMIN, "/train_cancel", "Stopping training run")
            await fake.wait_for(lambda: service.task is not None and service.task.done(), timeout=120)
            final = next(m for m in fake.messages(ADMIN) if m.message_id == plan.message_id)
            assert "stopped; resume it with /retrain resume" in final.text, final.text
            run = (await _one(settings, training_db.list_runs))[0]
            assert run.status == "resumable"
            assert (settings.data_dir / "runs" / str(run.id) / "out" / "checkpoint.pt").is_file()
            assert await _count(settings, ModelVersion) == 0
            assert await _one(settings, training_db.active_version) is None
            assert services.models._current is None or services.models._current.version_id is None  # nothing swapped
            status = await _command(fake, ADMIN, "/train_status", "Recent training runs")
            assert f"#{run.id} resumable" in status.text


async def test_train_cancel_cancels_an_open_plan_and_its_buttons_start_nothing(tmp_path, tiny_model):
    async with FakeTelegram() as fake:
        settings = bot_settings(tmp_path, fake, tiny_model, admins=[ADMIN])
        async with running_bot(settings) as app:
            app.bot_data["services"].training.options = small()
            await _command(fake, USER, "/training on", "may now be used")
            for i, text in enumerate(["hello there", "what is a fox?", "tell me about dogs"]):
                fake.send_user_message(USER, USER, text)
                await fake.wait_for(lambda i=i: final_reply(fake, USER, after=i), timeout=60)
            plan = await _command(fake, ADMIN, "/retrain force", "Retraining plan", timeout=60)
            assert plan.reply_markup, plan.text
            assert plan.texts[0].startswith("Preparing a retraining plan")  # shown at once, then edited
            start = _button(plan, "train:start:")
            await _command(fake, ADMIN, "/train_cancel", "Cancelled the open retraining plan")
            shown = await fake.wait_for(lambda: next((m for m in fake.messages(ADMIN) if m.message_id == plan.message_id
                                                      and "cancelled with /train_cancel" in m.text), None), timeout=20)
            assert not shown.reply_markup  # no buttons left to press
            fake.press_button(ADMIN, ADMIN, plan.message_id, start)  # an old client may still show them
            answer = await fake.wait_for(lambda: next((c for c in fake.calls("answerCallbackQuery")
                                                       if "expired" in (c.params.get("text") or "")), None), timeout=20)
            assert answer is not None
            await _command(fake, ADMIN, "/train_cancel", "No training run is in progress and no plan is open")
        assert await _count(settings, TrainingRun) == 0
