"""`docent serve`: our engine (lm.serve's continuous batching, through bot.services.lm_gateway.ChatModel) behind an
OpenAI-compatible HTTP API, so that bot replicas, or any OpenAI client, can use one model worker.

Standard endpoints:
    GET  /v1/models
    POST /v1/chat/completions   messages -> reply; "stream": true sends server-sent events
    POST /v1/completions        raw prompt -> continuation (no chat template); streams too
    POST /v1/embeddings         the sentence encoder ([documents] encoder), one vector per input

docent's own, which a foreign server (llama.cpp's server, vLLM, Ollama) lacks and the bot does without
(bot.services.remote_model):
    - in a streamed reply, chunks with an empty delta and a "docent" field: {"queued": ahead} while the reply
      waits for a place in the batch, {"started": true} once it has one (the user sees their queue position);
    - GET  /v1/docent/info      the context size, for fitting prompts and evidence on the bot's side;
    - POST /v1/docent/spans     copy decoding (lm.spans): answer spans scored by the model's log-probabilities.
Closing the connection of a streamed reply cancels it at the next token (the batch slot is freed).
The worker trims a chat that does not fit its context, oldest turns first, as the bot does in-process.
Given the bot's database, the worker serves the promoted model version and follows /promote and /rollback
(bot.services.worker_versions); /v1/models names the version ("run-3") or the configured model. Each request
keeps the model it started on until it ends, so a swap never cuts a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from aiohttp import web

from bot.config import Settings
from bot.services import lm_gateway as gateway  # lm's events, imported on first use
from bot.services.lm_gateway import ChatModel, generation_config
from lm import hub

log = logging.getLogger(__name__)
LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}  # escaped inside JSON strings


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


class Worker:
    """The HTTP application over one loaded ChatModel (and the encoder, loaded on the first embeddings call)."""

    def __init__(self, settings: Settings, model: ChatModel, extensions: bool = True):
        self.settings = settings
        self.model = model
        self.extensions = extensions  # False: the standard API only, as a foreign server offers it
        self._encoder = None
        self._encoder_lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 2**20)
        app.add_routes([
            web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            web.post("/v1/embeddings", self.embeddings),
        ])
        if self.extensions:
            app.add_routes([web.get("/v1/docent/info", self.info), web.post("/v1/docent/spans", self.spans)])
        return app

    def install(self, model: ChatModel) -> None:
        """Serve `model` from now on: requests running finish on the old one, whose server then stops."""
        old, self.model = self.model, model
        log.info("serving %s (was %s)", model.label, old.label)
        old.close(wait=False)

    # ---- requests ------------------------------------------------------------------------------

    def _config(self, body: dict[str, Any]):
        """The request's sampling settings over the configured ones (OpenAI names: max_tokens, top_p, ...)."""
        return generation_config(self.settings.model, temperature=body.get("temperature"), top_p=body.get("top_p"),
                                 max_new_tokens=body.get("max_tokens") or body.get("max_completion_tokens"),
                                 repetition_penalty=body.get("repetition_penalty"), top_k=body.get("top_k"))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise web.HTTPBadRequest(text=json.dumps({"error": {"message": f"body is not JSON: {e}"}}),
                                     content_type="application/json") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": {"message": "body must be a JSON object"}}),
                                     content_type="application/json")
        return body

    async def models(self, request: web.Request) -> web.Response:
        model = self.model
        return web.json_response({"object": "list", "data": [
            {"id": model.label, "object": "model", "created": 0, "owned_by": "docent", "version": model.version_id}]})

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({"model": self.model.label, "context_tokens": self.model.context_tokens,
                                  "features": ["queue", "spans", "embeddings"]})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            return _error(400, "messages must be a non-empty list of {role, content} with text content")
        config = self._config(body)
        messages = [{"role": m.get("role", "user"), "content": m["content"]} for m in messages]
        model = self.model  # this request's model until it ends, whatever a swap installs meanwhile
        ids = await asyncio.to_thread(model.prompt, messages, config)
        return await self._answer(request, model, body, ids, config, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return _error(400, "prompt must be a string")
        config = self._config(body)
        model = self.model
        ids = model.tokenizer.encode(prompt)
        return await self._answer(request, model, body, ids, config, chat=False)

    async def _answer(self, request: web.Request, model: ChatModel, body: dict, ids: list[int], config,
                      chat: bool) -> web.StreamResponse:
        """The generation of `ids` by `model`, as one JSON response or as server-sent events."""
        cancel = threading.Event()
        events = model.events(ids, config, cancel)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        try:
            if not body.get("stream"):
                text = "".join([e async for e in events if isinstance(e, str)])
                return web.json_response(self._whole(model, ident, kind, chat, text, len(ids)))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            async for event in events:
                await response.write(self._chunk(model, ident, kind, chat, event))
            await response.write(self._chunk(model, ident, kind, chat, None))
            await response.write(b"data: [DONE]\n\n")
            return response
        except ConnectionResetError:  # the client went away: the reply stops at its next token
            log.info("client closed %s; generation cancelled", ident)
            raise
        finally:
            cancel.set()
            await events.aclose()

    def _whole(self, model: ChatModel, ident: str, kind: str, chat: bool, text: str, prompt_tokens: int) -> dict:
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None})
        completion = model.count_tokens(text)
        return {"id": ident, "object": kind, "created": int(time.time()), "model": model.label,
                "choices": [choice], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                               "total_tokens": prompt_tokens + completion}}

    def _chunk(self, model: ChatModel, ident: str, kind: str, chat: bool, event: Any) -> bytes:
        """One server-sent event: a text delta, a queue state (docent's field), or the end (event None)."""
        text = event if isinstance(event, str) else ""
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if event is None else None}
        choice.update({"delta": {"content": text} if text or event is None else {}} if chat else {"text": text})
        chunk: dict[str, Any] = {"id": ident, "object": kind + (".chunk" if chat else ""), "created": int(time.time()),
                                 "model": model.label, "choices": [choice]}
        if self.extensions and isinstance(event, gateway.Queued):
            chunk["docent"] = {"queued": event.ahead}
        elif self.extensions and isinstance(event, gateway.Started):
            chunk["docent"] = {"started": True}
        # JSON leaves U+0085, U+2028 and U+2029 raw, and line readers that split as str.splitlines does (httpx's
        # aiter_lines) would cut the event at one of them: a model's token can hold one
        text = json.dumps(chunk, ensure_ascii=False).translate(LINE_BREAKS)
        return b"data: " + text.encode() + b"\n\n"

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "input must be a string or a non-empty list of strings")
        vectors = await asyncio.to_thread(lambda: self.encoder().encode(texts))
        return web.json_response({"object": "list", "model": self.settings.documents.encoder, "data": [
            {"object": "embedding", "index": i, "embedding": [float(x) for x in v]} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    def encoder(self):
        from lm.encoder import Encoder  # lazy: loads torch, seconds at start-up

        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = Encoder.load(hub.resolve(self.settings.documents.encoder, self.settings.cache_dir))
            return self._encoder

    async def spans(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        messages, evidence = body.get("messages"), body.get("evidence")
        if not isinstance(messages, list) or not isinstance(evidence, list):
            return _error(400, "messages and evidence must be lists")
        options = {k: body[k] for k in ("baseline", "calibration", "max_tokens", "beams", "keep") if k in body}
        spans = await self.model.copy_spans(messages, evidence, **options)
        return web.json_response({"spans": [{"text": s.text, "logprob": s.logprob} for s in spans]})


async def serve(settings: Settings, host: str, port: int, model: ChatModel | None = None,
                ready: asyncio.Event | None = None, extensions: bool = True) -> None:
    """Load the model (the active version, when the bot's database is known) and serve until cancelled
    (`extensions` False: the standard API only)."""
    # lazy: 0.2 s and 0.36 s of imports (measured) that the API's other users (tests, the bot's remote model) skip
    from bot.services.compute import in_own_thread
    from bot.services.worker_versions import VersionFollower, follows

    follower = None
    if model is None and follows(settings):
        worker: Worker | None = None
        follower = VersionFollower(settings, lambda loaded: worker.install(loaded))
        model = await follower.first()
    model = model or await in_own_thread(ChatModel.load, settings)
    worker = Worker(settings, model, extensions)
    runner = web.AppRunner(worker.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("docent serve: %s on http://%s:%d/v1%s", model.label, host, port,
             " (follows the active model version)" if follower else "")
    following = asyncio.get_running_loop().create_task(follower.run()) if follower else None
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await runner.cleanup()
        worker.model.close(wait=False)
