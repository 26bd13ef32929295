"""`docent run --check`: each thing that would stop the bot is reported, and no secret is printed."""

from __future__ import annotations

import asyncio

from bot.cli.main import main
from bot.config import Settings
from bot.services.preflight import preflight
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

GOOD_TOKEN = "1234567:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ"


def settings_for(tmp_path, **telegram) -> Settings:
    s = Settings()
    s.data_dir, s.cache_dir = tmp_path / "data", tmp_path / "cache"
    s.model.name = str(write_tiny_gguf(tmp_path / "tiny.gguf").path)
    s.model.weights = "fp32"
    s.documents.encoder = "minilm-l6"  # not in this empty cache
    for key, value in telegram.items():
        setattr(s.telegram, key, value)
    return s


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_a_good_setup_passes_every_check_but_the_missing_encoder(tmp_path):
    fake = FakeTelegram.start_in_thread(token=GOOD_TOKEN, bot_username="docent_check_bot")
    try:
        checks = by_name(asyncio.run(preflight(settings_for(tmp_path, token=GOOD_TOKEN, api_url=fake.base_url))))
    finally:
        fake.close()
    assert all(checks[n].ok for n in ("token", "bot api", "mode", "database", "chat model", "chat model loads"))
    assert "@docent_check_bot" in checks["bot api"].detail
    assert [c.method for c in fake.calls()] == ["getMe"]
    assert not checks["encoder"].ok and "docent model pull minilm-l6" in checks["encoder"].detail


def test_bad_token_webhook_and_database_are_each_reported_without_secrets(tmp_path):
    s = settings_for(tmp_path, token="12345:short-secret-value", mode="webhook", webhook_url="http://bot.example",
                     webhook_secret="has spaces")
    s.database.url = "postgresql+asyncpg://docent:hunter2@127.0.0.1:1/docent"  # nothing listens on port 1
    checks = by_name(asyncio.run(preflight(s)))
    assert not checks["token"].ok and "@BotFather" in checks["token"].detail
    assert not checks["webhook url"].ok and "https://" in checks["webhook url"].detail
    assert not checks["webhook secret"].ok
    assert not checks["database"].ok and "127.0.0.1:1" in checks["database"].detail
    printed = "\n".join(c.line() for c in checks.values())
    assert "hunter2" not in printed and "short-secret-value" not in printed


def test_a_model_that_is_not_there_is_reported_and_not_loaded(tmp_path):
    s = settings_for(tmp_path, token=GOOD_TOKEN)
    s.model.name = str(tmp_path / "nowhere.gguf")
    checks = by_name(asyncio.run(preflight(s)))
    assert not checks["chat model"].ok and "chat model loads" not in checks


def test_the_command_exits_1_and_prints_what_is_wrong(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DOCENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCENT_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("DOCENT_TELEGRAM_TOKEN", raising=False)
    assert main(["run", "--check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  token: not set" in out and "FAIL  chat model: qwen2.5-coder-0.5b is not pulled yet" in out


def test_an_unreachable_bot_api_fails_with_one_clear_line_and_no_token(tmp_path):
    checks = by_name(asyncio.run(preflight(settings_for(tmp_path, token=GOOD_TOKEN,
                                                        api_url="http://127.0.0.1:9/bot"))))
    line = checks["bot api"].line()
    assert not checks["bot api"].ok and line.startswith("FAIL  bot api: http://127.0.0.1:9/bot could not be reached")
    assert "\n" not in line and GOOD_TOKEN.split(":")[1] not in line


def test_a_token_the_bot_api_refuses_fails(tmp_path):
    fake = FakeTelegram.start_in_thread(token="7654321:" + "B" * 35)  # a different bot's token
    try:
        checks = by_name(asyncio.run(preflight(settings_for(tmp_path, token=GOOD_TOKEN, api_url=fake.base_url))))
    finally:
        fake.close()
    assert not checks["bot api"].ok and "refused the token" in checks["bot api"].detail


def test_the_command_exits_1_when_the_bot_api_is_unreachable(tmp_path, monkeypatch, capsys):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    for key, value in {"DATA_DIR": tmp_path / "data", "CACHE_DIR": tmp_path / "cache",
                       "CONFIG": tmp_path / "absent.toml", "TELEGRAM_TOKEN": GOOD_TOKEN,
                       "TELEGRAM_API_URL": "http://127.0.0.1:9/bot", "MODEL_NAME": tmp_path / "tiny.gguf",
                       "MODEL_WEIGHTS": "fp32"}.items():
        monkeypatch.setenv(f"DOCENT_{key}", str(value))
    assert main(["run", "--check"]) == 1
    assert "FAIL  bot api: http://127.0.0.1:9/bot could not be reached" in capsys.readouterr().out


async def test_a_replica_with_model_workers_checks_that_each_answers_instead_of_loading_a_model(tmp_path):
    """`[model] backend = "openai"`: a worker that answers /v1/models passes with what it serves, an unreachable
    one fails with its URL; the replica's own model files are not looked for (it has none)."""
    from aiohttp import web

    from bot.services.lm_gateway import ChatModel
    from bot.services.openai_server import Worker

    (tmp_path / "worker").mkdir()
    (tmp_path / "replica").mkdir()
    worker_settings = settings_for(tmp_path / "worker")
    model = await asyncio.to_thread(ChatModel.load, worker_settings)
    runner = web.AppRunner(Worker(worker_settings, model).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    fake = FakeTelegram.start_in_thread(token=GOOD_TOKEN, bot_username="docent_check_bot")
    try:
        s = settings_for(tmp_path / "replica", token=GOOD_TOKEN, api_url=fake.base_url)
        s.model.backend, s.model.name = "openai", str(tmp_path / "nowhere.gguf")
        s.model.url = f"http://127.0.0.1:{port}/v1, http://127.0.0.1:9/v1"
        checks = await preflight(s)
    finally:
        fake.close()
        await runner.cleanup()
        model.close()
    workers = [c for c in checks if c.name == "model worker"]
    assert [c.ok for c in workers] == [True, False]
    assert workers[0].detail == f"http://127.0.0.1:{port}/v1 serves {model.label}"
    assert workers[1].line().startswith("FAIL  model worker: http://127.0.0.1:9/v1/models: ConnectError")
    names = {c.name for c in checks}
    assert "chat model" not in names and "chat model loads" not in names
    assert all(c.ok for c in checks if c.name in ("token", "bot api", "database"))

    s.model.url = ""
    assert [c.line() for c in await preflight(s) if c.name == "model workers"] == [
        'FAIL  model workers: backend = "openai" needs [model] url (DOCENT_MODEL_URL), e.g. http://host:8000/v1']
