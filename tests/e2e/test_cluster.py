"""Past one machine (issue 27), as processes on this machine: two `docent run` replicas in webhook mode and one
`docent serve` model worker, all on one PostgreSQL database, against the fake Bot API.

- updates are POSTed alternately to both replicas, some to both: every message is answered exactly once;
- an upload on replica A is answered from on replica B, and a /forget on B is honoured by A;
- kill -9 of A while it writes a reply: B takes the reply over once A's lease expires and marks it interrupted;
- kill -9 of B (A restarted) mid-upload: A marks the upload interrupted, and no half-indexed document is left.

Replies come from the worker (a tiny random model that never ends its turn, cut at max_new_tokens) through
`[model] backend = "openai"`; the encoder is the real MiniLM, loaded by each replica. The same runs against a
worker serving only the standard OpenAI API (`docent serve --standard-only`), as a foreign server would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.db.session import create_engine, session_factory
from bot.db.tables import Document, Message, MessageSource
from bot.telegram.texts import INTERRUPTED_NOTE
from tests.e2e.test_bot import endless_model  # noqa: F401  (a fixture)
from tests.e2e.test_jobs import LEDGER, _status
from tests.e2e.test_webhook import SECRET, _free_port
from tests.support.bot_harness import final_reply, start_bot_process
from tests.support.fake_telegram import FakeTelegram
from tests.unit.test_knowledge import REPORT

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.postgres]
USERS = [3101, 3102, 3103, 3104]
LEASE_S = 3
# long enough that a reply is still being written at its first edit, however fast the machine: with 40, a fast
# one wrote the whole reply within the first edit interval, and the kill meant for mid-reply came after it ended
MAX_NEW_TOKENS = 400


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _start_worker(tmp_path: Path, model: Path, port: int, standard_only: bool) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env.update({"DOCENT_MODEL_NAME": str(model), "DOCENT_MODEL_WEIGHTS": "fp32", "DOCENT_MODEL_CONTEXT_TOKENS": "1024",
                "DOCENT_DATA_DIR": str(tmp_path / "worker"), "DOCENT_CONFIG": str(tmp_path / "absent.toml")})
    log = open(tmp_path / "worker.log", "ab")
    flags = ["--standard-only"] if standard_only else []
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             *flags], env=env, stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[2])

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    _wait(answers, 120, "the model worker did not start")
    return proc


class Replica:
    """One `docent run` in webhook mode, with its own data directory and log."""

    def __init__(self, tmp_path: Path, name: str, fake: FakeTelegram, model: Path, pg_url: str, worker_port: int):
        from bot.config import env_cache_dir

        self.dir, self.port = tmp_path / name, _free_port()
        self.dir.mkdir(exist_ok=True)
        self.proc = start_bot_process(
            self.dir, fake, model, DOCENT_TELEGRAM_MODE="webhook", DOCENT_TELEGRAM_WEBHOOK_URL="https://bot.example/telegram",
            DOCENT_TELEGRAM_WEBHOOK_SECRET=SECRET, DOCENT_TELEGRAM_WEBHOOK_LISTEN="127.0.0.1",
            DOCENT_TELEGRAM_WEBHOOK_PORT=str(self.port), DOCENT_TELEGRAM_EDIT_INTERVAL_PRIVATE_S="0.2",
            DOCENT_DATABASE_URL=pg_url, DOCENT_DATABASE_LEASE_S=str(LEASE_S), DOCENT_MODEL_BACKEND="openai",
            DOCENT_MODEL_URL=f"http://127.0.0.1:{worker_port}/v1", DOCENT_MODEL_MAX_NEW_TOKENS=str(MAX_NEW_TOKENS),
            DOCENT_CACHE_DIR=str(env_cache_dir()), DOCENT_DOCUMENTS_CHUNK_TOKENS="48",
            DOCENT_DOCUMENTS_CHUNK_OVERLAP_TOKENS="8")
        _wait(lambda: "docent is running as" in self.log() and _listening(self.port), 120, f"replica {name} start")

    def log(self) -> str:
        path = self.dir / "bot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def post(self, update: dict) -> None:
        """What the reverse proxy (deploy/cluster/nginx.conf) does: the update, at the public URL's path."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/telegram", data=json.dumps(update).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "X-Telegram-Bot-Api-Secret-Token": SECRET})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


async def _count(url: str, model, *where) -> int:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as s:
            return await s.scalar(select(func.count()).select_from(model).where(*where))
    finally:
        await engine.dispose()


def _bot_messages(fake: FakeTelegram, chat: int) -> list:
    return [m for m in fake.messages(chat) if m.from_bot]


@pytest.mark.parametrize("worker_kind", ["docent", "standard-only"])
def test_two_replicas_and_a_worker_on_postgresql(tmp_path, endless_model, pg_url, worker_kind):  # noqa: F811
    """With our worker, and with one that serves only the standard API, as a foreign server (llama.cpp's, vLLM,
    Ollama) would: the same outcomes, document answers quoting evidence sentences instead of scored spans."""
    fake = FakeTelegram.start_in_thread()
    worker_port = _free_port()
    worker = _start_worker(tmp_path, endless_model, worker_port, standard_only=worker_kind == "standard-only")
    replicas: list[Replica] = []
    try:
        a = Replica(tmp_path, "a", fake, endless_model, pg_url, worker_port)
        b = Replica(tmp_path, "b", fake, endless_model, pg_url, worker_port)
        replicas += [a, b]

        # every message answered once, though delivered alternately and some to both replicas
        for user in USERS:
            fake.send_user_message(user, user, f"hello from {user}")
        updates = fake.take_updates()
        for n, update in enumerate(updates):
            (a if n % 2 == 0 else b).post(update)
            if n % 2 == 0:
                b.post(update)  # Telegram, unsure, delivers it again; a proxy sends it to the other replica
        for user in USERS:
            fake.wait_for_sync(lambda u=user: final_reply(fake, u), timeout=120)
        time.sleep(2.0)  # room for a second answer to show up
        assert [len(_bot_messages(fake, u)) for u in USERS] == [1] * len(USERS)

        # an upload on A is answered from on B; a /forget on B is honoured by A
        ann = USERS[0]
        fake.send_user_document(ann, ann, "report.txt", REPORT, "text/plain")
        a.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: any(m.text.startswith("Indexed report.txt") for m in fake.messages(ann)), 120)
        fake.send_user_message(ann, ann, "/ask How long was the incubation period in ferrets?")
        b.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: final_reply(fake, ann, after=1), timeout=120)
        assert asyncio.run(_count(pg_url, MessageSource)) == 2, "B's answer drew on A's upload"
        fake.send_user_message(ann, ann, "/forget report.txt")
        b.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: (fake.last_text(ann) or "").startswith("Forgot report.txt"), 60)
        fake.send_user_message(ann, ann, "/ask How long was the incubation period in ferrets?")
        a.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: len(_bot_messages(fake, ann)) >= 5, 120)
        time.sleep(1.0)
        assert "report.txt" not in fake.last_text(ann), "A answered from a forgotten document"
        assert asyncio.run(_count(pg_url, Document)) == 0

        # kill -9 of A while it writes a reply: B marks it interrupted once A's lease has expired
        ben = USERS[1]
        fake.after_call("editMessageText", lambda params, result, victim=a: victim.kill()
                        if params.get("chat_id") == ben else None)
        fake.send_user_message(ben, ben, "tell me a story")
        a.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: a.proc.poll() is not None, 120)
        fake.wait_for_sync(lambda: INTERRUPTED_NOTE in (_bot_messages(fake, ben)[-1].text or ""), 60)
        assert len(_bot_messages(fake, ben)) == 2, "the cut reply was marked in its own message"
        # B stores the row as interrupted once the note is shown, a moment after the edit the fake has seen
        fake.wait_for_sync(lambda: asyncio.run(_count(pg_url, Message, Message.status == "streaming")) == 0, 30)

        # kill -9 of B mid-upload (A back): A marks the upload interrupted; nothing half-indexed is left
        a = Replica(tmp_path, "a2", fake, endless_model, pg_url, worker_port)
        replicas.append(a)
        cat = USERS[2]
        fake.after_call("editMessageText", lambda params, result, victim=b: victim.kill()
                        if params.get("chat_id") == cat and "embedding" in (params.get("text") or "") else None)
        fake.send_user_document(cat, cat, "ledger.txt", LEDGER, "text/plain")
        b.post(fake.take_updates()[0])
        fake.wait_for_sync(lambda: b.proc.poll() is not None, 120)
        fake.wait_for_sync(lambda: _status(fake, cat).text.startswith(
            "⚠️ Indexing ledger.txt was interrupted by a restart."), 60)
        assert asyncio.run(_count(pg_url, Document)) == 0, "the half-indexed upload was deleted"
    finally:
        for replica in replicas:
            replica.stop()
        worker.terminate()
        worker.wait(30)
        fake.close()
    for replica in replicas:
        assert fake._token.split(":", 1)[1] not in replica.log()
