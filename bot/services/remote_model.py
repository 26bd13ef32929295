"""The chat model of `[model] backend = "openai"`: one or more OpenAI-compatible workers reached over HTTP,
with the interface of bot.services.lm_gateway.ChatModel, so that the assistant and the answer pipeline do not know
where the model runs.

Our own worker (`docent serve`, bot.services.openai_server) gives everything the in-process model gives. A
foreign server (llama.cpp's server, vLLM, Ollama) gives replies; what needs docent's extensions degrades:
- queue position: without the "docent" queue chunks the user sees "…" until the first words, not "n ahead";
- document answers: copy decoding scores spans by the model's log-probabilities (/v1/docent/spans); without
  it the answer is the best evidence sentence itself, quoted with its source, as the support check chose it;
- prompt fitting: without /v1/docent/info the context is [model] context_tokens, and tokens are estimated
  from characters (a conservative three per token), where our worker trims the chat exactly on its side.
Requests go round-robin over the URLs given; a worker that refuses the connection is skipped for that request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from bot.config import Settings
from bot.services import lm_gateway as gateway  # lm's events and Span, imported on first use

if TYPE_CHECKING:
    from bot.services.lm_gateway import GenerationConfig

log = logging.getLogger(__name__)
CHARS_PER_TOKEN = 3  # an estimate that errs towards more tokens (English BPE averages about four)


def worker_urls(setting: str) -> list[str]:
    """`[model] url`: comma-separated base URLs ("http://host:port/v1"), without trailing slashes."""
    return [u.strip().rstrip("/") for u in setting.split(",") if u.strip()]


class RemoteChatModel:
    """ChatModel's interface over OpenAI-compatible workers (see the module docstring)."""

    version_id = None

    def __init__(self, settings: Settings, urls: list[str], info: dict[str, Any] | None, model_id: str):
        self.settings = settings
        self.urls = urls
        self.info = info  # our worker's /v1/docent/info, None for a foreign server
        self.model_id = model_id
        self.label = f"{model_id} at {urls[0]}" + (f" (+{len(urls) - 1})" if len(urls) > 1 else "")
        self.context_tokens = int(info["context_tokens"]) if info else settings.model.context_tokens
        self._next = itertools.cycle(range(len(urls)))
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(settings.telegram.generation_timeout_s, connect=5.0))

    @classmethod
    async def connect(cls, settings: Settings) -> RemoteChatModel:
        """The workers of `[model] url`, asked which model they serve and (ours) their context size."""
        urls = worker_urls(settings.model.url)
        if not urls:
            raise ValueError('[model] backend = "openai" needs [model] url (DOCENT_MODEL_URL)')
        async with httpx.AsyncClient(timeout=10.0) as client:
            models = (await client.get(urls[0] + "/models")).raise_for_status().json()
            info = await client.get(urls[0] + "/docent/info")
        model_id = models["data"][0]["id"] if models.get("data") else "model"
        return cls(settings, urls, info.json() if info.status_code == 200 else None, model_id)

    @property
    def ours(self) -> bool:
        return self.info is not None

    # ---- sizes: exact on our worker's side, estimated here ------------------------------------------

    def count_tokens(self, text: str) -> int:
        return -(-len(text) // CHARS_PER_TOKEN)

    def _chat_tokens(self, messages: list[dict]) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages)  # a few for each turn's markers

    def leaves_room(self, messages: list[dict], new_tokens: int) -> bool:
        return self._chat_tokens(messages) + new_tokens + 1 <= self.context_tokens

    def fit(self, messages: list[dict], config: GenerationConfig) -> list[dict]:
        """Drop the oldest turns (the system prompt kept) until the estimate fits; our worker trims exactly."""
        reserve = min(config.max_new_tokens, self.context_tokens // 4)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while len(turns) > 1 and self._chat_tokens(system + turns) + reserve > self.context_tokens:
            turns = turns[1:]
        return system + turns

    # ---- requests -----------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST to the next worker, trying the others when one refuses the connection."""
        last: Exception | None = None
        for _ in self.urls:
            url = self.urls[next(self._next)] + path
            try:
                return (await self.client.post(url, json=body)).raise_for_status()
            except httpx.ConnectError as e:
                log.warning("model worker %s unreachable: %s", url, e)
                last = e
        raise ConnectionError(f"no model worker reachable ({', '.join(self.urls)})") from last

    def _request(self, messages: list[dict], config: GenerationConfig) -> dict[str, Any]:
        return {"model": self.model_id, "messages": self.fit(messages, config), "stream": True,
                "max_tokens": config.max_new_tokens, "temperature": config.temperature, "top_p": config.top_p}

    async def reply_events(self, messages: list[dict], config: GenerationConfig, cancel: threading.Event,
                           priority: int = 0) -> AsyncIterator[Any]:
        """Text deltas, and lm.serve.Queued / Started where the worker sends them (ours). Leaving early, or
        `cancel`, closes the connection, which stops the generation on our worker."""
        body = self._request(messages, config)
        last: Exception | None = None
        for _ in self.urls:
            url = self.urls[next(self._next)] + "/chat/completions"
            try:
                async with self.client.stream("POST", url, json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if cancel.is_set():
                            return
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        state = chunk.get("docent") or {}
                        if "queued" in state:
                            yield gateway.Queued(int(state["queued"]))
                        elif state.get("started"):
                            yield gateway.Started()
                        for choice in chunk.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                yield text
                    return
            except httpx.ConnectError as e:
                log.warning("model worker %s unreachable: %s", url, e)
                last = e
        raise ConnectionError(f"no model worker reachable ({', '.join(self.urls)})") from last

    def stream_chat(self, messages: list[dict], config: GenerationConfig, cancel: threading.Event | None = None,
                    priority: int = 0) -> Iterator[str]:
        """Text deltas of the reply (blocking: for threads, e.g. a summary's rewriting)."""
        body = self._request(messages, config)
        with httpx.Client(timeout=self.client.timeout) as client, \
                client.stream("POST", self.urls[next(self._next)] + "/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if cancel is not None and cancel.is_set():
                    return
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    for choice in json.loads(line[5:]).get("choices") or []:
                        if text := (choice.get("delta") or {}).get("content"):
                            yield text

    async def copy_spans(self, messages: list[dict], evidence: list[str], **options) -> list:
        """Answer spans scored on our worker; from a foreign server, the evidence sentences themselves, in the
        order given (best first), as spans of equal score."""
        if not self.ours:
            return [gateway.Span(text, 0.0) for text in evidence]
        response = await self._post("/docent/spans", {"messages": messages, "evidence": evidence, **options})
        return [gateway.Span(s["text"], float(s["logprob"])) for s in response.json()["spans"]]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        response = await self._post("/embeddings", {"model": self.model_id, "input": texts})
        return [d["embedding"] for d in sorted(response.json()["data"], key=lambda d: d["index"])]

    def close(self, wait: bool = True, cancel: bool = False) -> None:
        """ChatModel.close's signature: the workers run on, so there is nothing to wait for or cancel here."""
        try:
            asyncio.get_running_loop().create_task(self.client.aclose())
        except RuntimeError:  # no loop any more: the process is ending
            pass
