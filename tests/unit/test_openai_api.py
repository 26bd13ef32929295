"""`docent serve`'s OpenAI-compatible API (bot.services.openai_server) over real HTTP on loopback, with a tiny
random model decoding greedily, and the bot's `[model] backend = "openai"` client (bot.services.remote_model):
the worker's replies, streamed or whole, equal the in-process model's; the queue states and copy decoding's
scored spans reach the client through docent's extensions; a foreign server's client (no extensions) still
replies and answers from evidence sentences; closing a stream frees its slot; bad requests get a 400."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bot.config import Settings
from bot.services.lm_gateway import ChatModel, ModelManager, generation_config
from bot.services.openai_server import Worker
from bot.services.remote_model import RemoteChatModel
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.usefixtures("one_thread")
CHAT = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def model_and_settings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    settings = Settings(data_dir=tmp / "data", cache_dir=tmp / "cache")
    settings.model.name = str(write_tiny_gguf(tmp / "tiny.gguf", max_seq_len=1024).path)
    settings.model.weights, settings.model.temperature = "fp32", 0.0
    settings.model.max_new_tokens, settings.model.context_tokens = 16, 800
    model = ChatModel.load(settings)
    yield model, settings
    model.close()


@pytest.fixture
async def worker(model_and_settings) -> AsyncIterator[str]:
    model, settings = model_and_settings
    runner = web.AppRunner(Worker(settings, model).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def local_reply(model: ChatModel, settings: Settings) -> str:
    return "".join(model.stream_chat(CHAT, generation_config(settings.model)))


async def test_chat_completions_whole_and_streamed_equal_the_in_process_reply(worker, model_and_settings):
    model, settings = model_and_settings
    expected = local_reply(model, settings)
    assert expected
    async with httpx.AsyncClient(timeout=60) as client:
        listed = (await client.get(worker + "/models")).json()
        assert [m["id"] for m in listed["data"]] == [model.label]
        whole = (await client.post(worker + "/chat/completions", json={"messages": CHAT, "temperature": 0})).json()
        assert whole["object"] == "chat.completion"
        assert whole["choices"][0]["message"] == {"role": "assistant", "content": expected}
        assert whole["usage"]["prompt_tokens"] > 0
        lines = []
        async with client.stream("POST", worker + "/chat/completions",
                                 json={"messages": CHAT, "temperature": 0, "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[5:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected
    assert {"started": True} in [c.get("docent") for c in chunks], "the queue state reaches the client"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_completions_continue_raw_text(worker, model_and_settings):
    model, settings = model_and_settings
    expected = "".join(model.stream_text("Once upon a time", generation_config(settings.model)))
    async with httpx.AsyncClient(timeout=60) as client:
        got = (await client.post(worker + "/completions", json={"prompt": "Once upon a time", "temperature": 0})).json()
    assert got["choices"][0]["text"] == expected


async def test_bad_requests_are_refused_with_a_reason(worker):
    async with httpx.AsyncClient(timeout=60) as client:
        missing = await client.post(worker + "/chat/completions", json={"temperature": 0})
        not_json = await client.post(worker + "/completions", content=b"{nope")
    assert missing.status_code == 400 and "messages" in missing.json()["error"]["message"]
    assert not_json.status_code == 400


async def test_the_bots_openai_backend_replies_and_scores_spans_through_the_worker(worker, model_and_settings):
    model, settings = model_and_settings
    remote_settings = Settings(data_dir=settings.data_dir, cache_dir=settings.cache_dir)
    remote_settings.model.backend, remote_settings.model.url = "openai", f"http://127.0.0.1:1/v1, {worker}"
    remote_settings.model.temperature, remote_settings.model.max_new_tokens = 0.0, 16
    manager = ModelManager(remote_settings)
    with pytest.raises(httpx.ConnectError):  # the first URL is down: start-up says so; replies skip it
        await manager.current()
    remote_settings.model.url = f"{worker},http://127.0.0.1:1/v1"
    remote = await manager.current()
    assert isinstance(remote, RemoteChatModel) and remote.ours and remote.context_tokens == model.context_tokens
    for _ in range(2):  # round-robin: the unreachable worker is skipped
        events = [e async for e in remote.reply_events(CHAT, generation_config(remote_settings.model),
                                                          threading.Event())]
        assert "".join(e for e in events if isinstance(e, str)) == local_reply(model, settings)
        assert any(type(e).__name__ == "Started" for e in events)
    evidence = ["The comet returns every 76 years.", "Its last visit was in 1986."]
    chat = [{"role": "user", "content": "When was its last visit? " + " ".join(evidence)}]
    here = await model.copy_spans(chat, evidence, max_tokens=8)
    there = await remote.copy_spans(chat, evidence, max_tokens=8)
    assert [s.text for s in there] == [s.text for s in here]
    assert [s.logprob for s in there] == pytest.approx([s.logprob for s in here], abs=1e-4)


async def test_a_foreign_servers_client_replies_and_answers_from_evidence_sentences(worker, model_and_settings):
    model, settings = model_and_settings
    foreign = RemoteChatModel(settings, [worker], None, "some-model")  # as for a server without /v1/docent
    assert not foreign.ours and foreign.context_tokens == settings.model.context_tokens
    text = "".join([e async for e in foreign.reply_events(CHAT, generation_config(settings.model), threading.Event())
                    if isinstance(e, str)])
    assert text == local_reply(model, settings)
    spans = await foreign.copy_spans(CHAT, ["First sentence.", "Second sentence."])
    assert [s.text for s in spans] == ["First sentence.", "Second sentence."]
    long_chat = [CHAT[0]] + [{"role": "user", "content": "word " * 400}] * 6
    fitted = foreign.fit(long_chat, generation_config(settings.model))
    assert fitted[0] == CHAT[0] and 1 <= len(fitted) - 1 < 6 and foreign.leaves_room(fitted, 16)


async def test_closing_a_stream_frees_its_place_in_the_batch(worker, model_and_settings):
    model, settings = model_and_settings
    body = {"messages": CHAT, "temperature": 0, "stream": True, "max_tokens": 600}
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("POST", worker + "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"content"' in line:
                    break  # the user pressed /cancel: the bot closes the connection
    for _ in range(200):
        if model.server.load()["running"] == 0:
            break
        await asyncio.sleep(0.05)
    assert model.server.load() == {**model.server.load(), "running": 0, "waiting": 0}


@pytest.mark.integration
async def test_embeddings_are_the_encoders_vectors(model_and_settings, tmp_path):
    from bot.config import env_cache_dir
    from lm import hub
    from lm.encoder import Encoder

    model, settings = model_and_settings
    encoder_dir = hub.pull("minilm-l6", env_cache_dir())
    with_encoder = Settings(data_dir=tmp_path, cache_dir=settings.cache_dir)
    with_encoder.documents.encoder = str(encoder_dir)
    runner = web.AppRunner(Worker(with_encoder, model).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            got = (await client.post(url + "/embeddings", json={"input": ["a cat sat", "stock prices fell"]})).json()
            one = (await client.post(url + "/embeddings", json={"input": "a cat sat"})).json()
    finally:
        await runner.cleanup()
    expected = Encoder.load(encoder_dir).encode(["a cat sat", "stock prices fell"])
    import numpy as np

    vectors = np.array([d["embedding"] for d in got["data"]])
    assert [d["index"] for d in got["data"]] == [0, 1]
    assert np.allclose(vectors, expected, atol=1e-4)
    assert np.allclose(one["data"][0]["embedding"], vectors[0], atol=1e-6)


async def test_a_standard_only_worker_is_taken_for_a_foreign_server(model_and_settings):
    model, settings = model_and_settings
    runner = web.AppRunner(Worker(settings, model, extensions=False).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    try:
        remote_settings = Settings(data_dir=settings.data_dir, cache_dir=settings.cache_dir)
        remote_settings.model.backend, remote_settings.model.url = "openai", url
        remote_settings.model.temperature, remote_settings.model.max_new_tokens = 0.0, 16
        remote = await RemoteChatModel.connect(remote_settings)
        events = [e async for e in remote.reply_events(CHAT, generation_config(remote_settings.model),
                                                          threading.Event())]
        await remote.client.aclose()
    finally:
        await runner.cleanup()
    assert not remote.ours
    assert all(isinstance(e, str) for e in events), "no queue states from a server without them"
    assert "".join(events) == local_reply(model, settings)


def test_a_streamed_token_with_a_unicode_line_break_stays_one_event(model_and_settings):
    """A random model's token may hold U+2028 or U+0085: the event is still one line for a client that splits
    lines as str.splitlines does (httpx's aiter_lines), and its text arrives whole."""
    model, settings = model_and_settings
    text = "a\u2028b\u2029c\x85d"
    event = Worker(settings, model)._chunk(model, "chatcmpl-x", "chat.completion", True, text).decode()
    lines = [line for line in event.splitlines() if line]
    assert len(lines) == 1 and json.loads(lines[0][5:])["choices"][0]["delta"]["content"] == text
