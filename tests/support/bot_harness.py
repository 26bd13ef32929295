"""Run the real docent Application (python-telegram-bot, long polling) against the fake Bot API.

`running_bot(settings)` starts the application in this event loop and stops it afterwards;
`bot_settings(tmp_path, fake, model_path, **telegram)` makes Settings that point everything at
temporary directories and at the fake server; `start_bot_process` runs `docent run` as a child process
configured the same way through DOCENT_* variables (for kill -9 and webhook tests).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from bot.app import build_application
from bot.config import Settings
from tests.support.fake_telegram import FakeTelegram


def bot_settings(tmp_path: Path, fake: FakeTelegram, model_path: str | Path, **telegram) -> Settings:
    s = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    s.telegram.token = fake._token
    s.telegram.api_url = fake.base_url
    s.telegram.file_url = fake.base_file_url
    s.telegram.edit_interval_private_s = 0.2
    s.telegram.edit_interval_group_s = 0.5
    for key, value in telegram.items():
        setattr(s.telegram, key, value)
    s.model.name = str(model_path)
    s.model.weights = "fp32"
    s.model.temperature = 0.0  # greedy: the tiny model's reply is a function of its prompt
    s.model.max_new_tokens = 24
    s.model.context_tokens = 256
    s.model.system_prompt = "You are a test assistant."
    return s


@contextlib.asynccontextmanager
async def running_bot(settings: Settings, models=None) -> AsyncIterator:
    app = build_application(settings, models)
    async with app:
        await app.post_init(app)  # run_polling would call it; we drive the application by hand
        await app.start()
        await app.updater.start_polling(poll_interval=0.0, timeout=1)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()
            await app.post_stop(app)
    await app.bot_data["db_engine"].dispose()


def final_reply(fake: FakeTelegram, chat_id: int, after: int = 0):
    """The bot's latest finished reply in a chat (a reply carries the 👍/👎 buttons when complete)."""
    msgs = [m for m in fake.messages(chat_id) if m.reply_markup and "fb:1" in str(m.reply_markup)]
    return msgs[-1] if len(msgs) > after else None


def start_bot_process(tmp_path: Path, fake: FakeTelegram, model: Path, **env: str) -> subprocess.Popen:
    """`docent run` in a child process against the fake server, logging to tmp_path/bot.log; `env` adds or
    overrides DOCENT_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    clean.update({
        "DOCENT_TELEGRAM_TOKEN": fake._token, "DOCENT_TELEGRAM_API_URL": fake.base_url,
        "DOCENT_TELEGRAM_FILE_URL": fake.base_file_url, "DOCENT_DATA_DIR": str(tmp_path / "data"),
        "DOCENT_CACHE_DIR": str(tmp_path / "cache"), "DOCENT_MODEL_NAME": str(model),
        "DOCENT_MODEL_WEIGHTS": "fp32", "DOCENT_CONFIG": str(tmp_path / "absent.toml"), **env,
    })
    log = open(tmp_path / "bot.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], env=clean, stdout=log, stderr=log,
                            cwd=Path(__file__).resolve().parents[2])
