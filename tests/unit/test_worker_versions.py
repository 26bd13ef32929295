"""A model worker follows the promoted version (bot.services.worker_versions), over real HTTP on loopback, on real
SQLite and PostgreSQL, with a tiny random GGUF model and a real LoRA version trained from it: `docent serve`'s
`serve()` given the bot's database starts on the active version; a replica with `[model] backend = "openai"`
promotes or rolls back through ModelVersions.activate, and the worker serves the new one (its /v1/models and
its replies) while a stream begun before the swap ends on the model it began with; a version that does not load
leaves the worker serving what it served; a version's files are found in the worker's own versions directory."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from bot.config import Settings
from bot.db import training as training_db
from bot.db.session import create_engine, session_factory, upgrade
from bot.services.lm_gateway import ChatModel, ModelManager, generation_config
from bot.services.openai_server import serve
from bot.services.training.versions import ModelVersions
from tests.e2e.test_webhook import _free_port
from tests.unit.test_training_service import lora_run, tiny  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]
CHAT = [{"role": "system", "content": "You are a test assistant."}, {"role": "user", "content": "question 1"}]


def worker_settings(tmp_path: Path, model: Path, db_url: str) -> Settings:
    s = Settings(data_dir=tmp_path / "worker", cache_dir=tmp_path / "cache")
    s.model.name, s.model.weights, s.model.context_tokens = str(model), "fp32", 256
    s.model.temperature, s.model.max_new_tokens = 0.0, 12
    s.database.url, s.model.follow_s = db_url, 0.1
    return s


async def served(client: httpx.AsyncClient, url: str) -> tuple[str, int | None]:
    model = (await client.get(url + "/models")).json()["data"][0]
    return model["id"], model["version"]


async def until_served(client: httpx.AsyncClient, url: str, label: str) -> None:
    """Wait until the worker serves `label` (a bound for a broken follower, not a timing requirement)."""
    deadline = time.monotonic() + 120
    while (await served(client, url))[0] != label:
        assert time.monotonic() < deadline, f"the worker never served {label}"
        await asyncio.sleep(0.1)


async def reply(client: httpx.AsyncClient, url: str) -> dict:
    body = {"model": "any", "messages": CHAT, "max_tokens": 12, "temperature": 0}
    return (await client.post(url + "/chat/completions", json=body)).raise_for_status().json()


async def test_the_worker_serves_the_promoted_version_and_follows_promote_and_rollback(
        tmp_path, tiny, lora_run, db_url, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="bot.services.worker_versions")
    root, _ = lora_run
    await upgrade(db_url)
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    # the replica that trained: its versions directory, a version in it, promoted before the worker starts
    replica = Settings(data_dir=tmp_path / "replica", cache_dir=tmp_path / "cache")
    replica.model.name, replica.model.weights, replica.model.context_tokens = str(tiny), "fp32", 256
    replica.model.backend, replica.model.temperature = "openai", 0.0
    shutil.copytree(root / "out", replica.data_dir / "versions" / "run-1")
    async with sessions() as s:
        v1 = await training_db.add_version(s, name="run-1", base=str(tiny), path=str(replica.data_dir / "versions"
                                                                                      / "run-1"),
                                           data_size=None, heldout_loss=None, notes="{}")
        await training_db.set_active(s, v1.id)

    settings = worker_settings(tmp_path, tiny, db_url)
    port, ready = _free_port(), asyncio.Event()
    url = f"http://127.0.0.1:{port}/v1"
    worker = asyncio.create_task(serve(settings, "127.0.0.1", port, ready=ready))
    await asyncio.wait_for(ready.wait(), 120)
    replica.model.url = url
    versions = ModelVersions(replica, sessions, ModelManager(replica))
    as_version = ChatModel.load(settings, str(replica.data_dir / "versions" / "run-1"), v1.id)
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            assert await served(client, url) == ("run-1", v1.id), "a starting worker serves the active version"
            expected = "".join(as_version.stream_chat(CHAT, generation_config(settings.model)))
            assert (await reply(client, url))["choices"][0]["message"]["content"] == expected

            # rollback from a replica while a stream is running: the stream ends on the version it began with
            body = {"model": "any", "messages": CHAT, "max_tokens": 200, "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/chat/completions", json=body) as stream:
                lines = stream.aiter_lines()
                first = await anext(lines)
                while not first.startswith("data:"):
                    first = await anext(lines)
                await versions.activate(None)
                await until_served(client, url, str(tiny))
                rest = [line async for line in lines if line.startswith("data:")]
            chunks = [json.loads(line[5:]) for line in [first, *rest] if line[5:].strip() != "[DONE]"]
            assert rest[-1] == "data: [DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
            assert {c["model"] for c in chunks} == {"run-1"}
            assert (await reply(client, url))["model"] == str(tiny)
            assert await served(client, url) == (str(tiny), None)

            # promoted again, through the replica's backend = "openai" model manager: its replies come from it
            await versions.activate(v1.id)
            await until_served(client, url, "run-1")
            remote = await versions.models.current()
            config = generation_config(settings.model, max_new_tokens=12)
            events = remote.reply_events(CHAT, config, threading.Event())
            text = "".join([e async for e in events if isinstance(e, str)])
            assert text == expected

            # a version whose files this worker cannot find: it goes on serving run-1
            async with sessions() as s:
                v2 = await training_db.add_version(s, name="run-2", base=str(tiny), path=str(tmp_path / "elsewhere"),
                                                   data_size=None, heldout_loss=None, notes="{}")
                await training_db.set_active(s, v2.id)
            deadline = time.monotonic() + 120
            while "could not load model version run-2" not in caplog.text:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert await served(client, url) == ("run-1", v1.id)

            # a version trained on another machine, copied into this worker's own versions directory
            shutil.copytree(root / "out", settings.data_dir / "versions" / "run-3")
            async with sessions() as s:
                v3 = await training_db.add_version(s, name="run-3", base=str(tiny), path="/on/another/machine/run-3",
                                                   data_size=None, heldout_loss=None, notes="{}")
                await training_db.set_active(s, v3.id)
            await until_served(client, url, "run-3")
            assert (await reply(client, url))["choices"][0]["message"]["content"] == expected
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        as_version.close()
        if versions.models.loaded:
            (await versions.models.current()).close()
        await engine.dispose()
