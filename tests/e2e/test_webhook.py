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


def _post(port: int, update: dict | bytes, secret: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _start_webhook_bot(tmp_path, fake: FakeTelegram):
    """`docent run` in webhook mode on a free port, once setWebhook was called: (process, port)."""
    model = write_tiny_gguf(tmp_path / "tiny.gguf").path
    port = _free_port()
    proc = start_bot_process(tmp_path, fake, model, DOCENT_TELEGRAM_MODE="webhook",
                             DOCENT_TELEGRAM_WEBHOOK_URL="https://bot.example/", DOCENT_TELEGRAM_WEBHOOK_SECRET=SECRET,
                             DOCENT_TELEGRAM_WEBHOOK_LISTEN="127.0.0.1", DOCENT_TELEGRAM_WEBHOOK_PORT=str(port))
    try:
        fake.wait_for_sync(lambda: fake.webhook_url == "https://bot.example/", timeout=60)
    except BaseException:
        proc.kill()
        proc.wait(20)
        fake.close()
        raise
    return proc, port


def _first_post(port: int, body: dict | bytes, secret: str | None) -> int:
    deadline = time.monotonic() + 30
    while True:  # the server listens a moment after setWebhook
        try:
            return _post(port, body, secret)
        except (ConnectionError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_webhook_handles_signed_updates_once_and_refuses_the_rest(tmp_path):
    fake = FakeTelegram.start_in_thread()
    proc, port = _start_webhook_bot(tmp_path, fake)
    try:
        fake.send_user_message(USER, USER, "hello")
        [update] = fake.take_updates()
        assert _first_post(port, update, "wrong-secret") == 403
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


def test_webhook_answers_bodies_that_are_not_updates_with_400_and_one_warning_each(tmp_path):
    fake = FakeTelegram.start_in_thread()
    proc, port = _start_webhook_bot(tmp_path, fake)
    bad = [b'{"update_id": 5, "message": {', b'\xff\xfe{"update_id": 6}', b'[1, 2]', b'"hello"',
           b'{"message": {"text": "no update id"}}']
    try:
        assert _first_post(port, bad[0], SECRET) == 400
        assert [_post(port, body, SECRET) for body in bad[1:]] == [400] * (len(bad) - 1)
        assert _post(port, bad[0], "wrong-secret") == 403  # the secret is still checked first
        fake.send_user_message(USER, USER, "hello")  # and the bot still answers real updates
        [update] = fake.take_updates()
        assert _post(port, update, SECRET) == 200
        fake.wait_for_sync(lambda: final_reply(fake, USER), timeout=60)
    finally:
        proc.terminate()
        proc.wait(20)
        fake.close()
    log = (tmp_path / "bot.log").read_text()
    assert "Traceback" not in log and "CRITICAL" not in log
    assert log.count("refused a request from 127.0.0.1 that is not a Telegram update") == len(bad)
