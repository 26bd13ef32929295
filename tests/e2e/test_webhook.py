"""`docent run` in webhook mode, as a process: updates signed with the secret token are handled once, others
are refused. The fake Bot API records setWebhook; the test POSTs the updates as Telegram would."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.bot_harness import final_reply, start_bot_process
from tests.support.fake_telegram import FakeTelegram
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.e2e
USER = 1001
SECRET = "s3cret-token_for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, update: dict, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(update).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_webhook_handles_signed_updates_once_and_refuses_the_rest(tmp_path):
    model = write_tiny_gguf(tmp_path / "tiny.gguf").path
    fake = FakeTelegram.start_in_thread()
    port = _free_port()
    proc = start_bot_process(tmp_path, fake, model, DOCENT_TELEGRAM_MODE="webhook",
                             DOCENT_TELEGRAM_WEBHOOK_URL="https://bot.example/", DOCENT_TELEGRAM_WEBHOOK_SECRET=SECRET,
                             DOCENT_TELEGRAM_WEBHOOK_LISTEN="127.0.0.1", DOCENT_TELEGRAM_WEBHOOK_PORT=str(port))
    try:
        fake.wait_for_sync(lambda: fake.webhook_url == "https://bot.example/", timeout=60)
        fake.send_user_message(USER, USER, "hello")
        [update] = fake.take_updates()
        deadline = time.monotonic() + 30
        while True:  # the server listens a moment after setWebhook
            try:
                status = _post(port, update, "wrong-secret")
                break
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert status == 403
        assert _post(port, update, None) == 403
        time.sleep(1.0)
        assert fake.messages(USER) == [], "a refused update was handled"
        assert _post(port, update, SECRET) == 200
        assert _post(port, update, SECRET) == 200  # Telegram retries when it is not sure we got it
        fake.wait_for_sync(lambda: final_reply(fake, USER), timeout=60)
        time.sleep(2.0)  # room for a second reply to show up
        assert len(fake.messages(USER)) == 1, "the repeated update was answered twice"
    finally:
        proc.terminate()
        proc.wait(20)
        fake.close()
    assert SECRET not in (tmp_path / "bot.log").read_text()
