"""The active chat model: loading, hot swapping, and generation for every chat at once.

This is the bot's one gateway to `lm` for generation: no other module of bot/services imports lm.engine, lm.serve
or lm.spans (tests/unit/test_layers.py checks it). What they need of those is re-exported here, by name
(`GENERATION_NAMES`): the events a reply streams (a text piece is a plain `str`; `Queued`, `Started`), the
`ContextOverflow` a prompt too long for the model raises, `GenerationConfig` and copy decoding's `Span`.

Each `ChatModel` owns an `lm.serve.Server`, whose scheduler thread batches the decoding of every chat's reply
(and runs copy decoding for document answers between its steps), so a reply never waits for a whole other reply.
A reply takes a reference to the current `ChatModel` when it starts, so a swap (a new model version promoted)
never disturbs replies already streaming: they finish on the model they began with, whose server then stops.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from bot.config import ModelSettings, Settings
from bot.services.compute import in_own_thread

if TYPE_CHECKING:
    from lm.engine import ContextOverflow, GenerationConfig, Result
    from lm.serve import Queued, Started
    from lm.spans import Span

# the re-exports (GENERATION_NAMES) for type checkers; at run time __getattr__ below gives them
__all__ = ["ContextOverflow", "GenerationConfig", "Queued", "Result", "Span", "Started"]

log = logging.getLogger(__name__)

INTERACTIVE, BACKGROUND = 0, 1  # request priorities: a summary's rewriting never holds up a chat reply
# the [model] settings that are lm.engine.GenerationConfig fields (the config's defaults for every reply)
SAMPLING_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "no_repeat_ngram")


# re-exported lazily: importing lm.engine or lm.serve loads torch, about 1.2 s that `docent run` does not spend
# before the model loads (bot.app imports no torch; measured with `import lm.serve` on the dev machine); the
# lm imports inside the functions below are lazy for the same reason
GENERATION_NAMES = {"ContextOverflow": "lm.engine", "GenerationConfig": "lm.engine", "Result": "lm.engine",
                    "Queued": "lm.serve", "Started": "lm.serve", "Span": "lm.spans"}


def __getattr__(name: str) -> Any:
    """`lm_gateway.Queued` and the other GENERATION_NAMES, imported from lm on first use."""
    if name not in GENERATION_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(GENERATION_NAMES[name]), name)


def generation_config(model: ModelSettings, **overrides: Any) -> GenerationConfig:
    """The generation settings of one reply: the configured ones ([model] in the config), overridden per chat or
    per command (an override of None keeps the configured value)."""
    from lm.engine import GenerationConfig

    values = {name: getattr(model, name) for name in SAMPLING_SETTINGS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationConfig(**values)


class ChatModel:
    """A loaded model with its tokenizer and generation server (lm.serve), plus the version it came from."""

    def __init__(self, model: Any, tokenizer: Any, context_tokens: int, version_id: int | None = None,
                 label: str = "", settings: ModelSettings | None = None):
        from lm.serve import Server

        settings = settings or ModelSettings()
        self.model, self.tokenizer = model, tokenizer
        self.context_tokens = min(context_tokens, model.config.max_seq_len)
        self.server = Server(model, tokenizer, max_len=self.context_tokens, slots=settings.batch_size,
                             prefill_chunk=settings.prefill_chunk, cache_tokens=settings.prefix_cache_tokens)
        self._spans = None  # lm.spans.SpanDecoder, made on the first document answer
        self.version_id = version_id
        self.label = label

    @classmethod
    def load(cls, settings: Settings, name_or_path: str | None = None, version_id: int | None = None) -> ChatModel:
        """A hub name, a GGUF file or a model directory trained or fine-tuned by docent (lm.load), in the
        configured weights format."""
        from lm.load import load_chat_model

        name = str(name_or_path or settings.model.name)
        model, tokenizer = load_chat_model(name, settings.cache_dir, weights=settings.model.weights,
                                           threads=settings.model.threads, max_seq_len=settings.model.context_tokens)
        return cls(model, tokenizer, settings.model.context_tokens, version_id, label=name, settings=settings.model)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def leaves_room(self, messages: list[dict], new_tokens: int) -> bool:
        """Whether the chat `messages`, as the model's template writes them, leave `new_tokens` (and an end
        token) in the context: what copy decoding (lm.spans) needs of its prompt."""
        prompt = self.tokenizer.render_chat(messages, add_generation_prompt=True)[0]
        return len(prompt) + new_tokens + 1 <= self.context_tokens

    def fit(self, messages: list[dict], config: GenerationConfig) -> list[dict]:
        """Drop the oldest turns until the prompt and the reply fit the context (system prompt kept). The reply
        keeps at most a quarter of the context; the server cuts it to what the prompt leaves
        (lm.engine.reply_budget)."""
        from lm.engine import trim_messages

        reserve = min(config.max_new_tokens, self.context_tokens // 4)
        return trim_messages(messages, self.tokenizer, self.context_tokens, reserve)

    def prompt(self, messages: list[dict], config: GenerationConfig) -> list[int]:
        """The token ids of the reply's prompt: `messages`, trimmed to fit the context."""
        ids, _ = self.tokenizer.render_chat(self.fit(messages, config), add_generation_prompt=True)
        return list(ids)

    async def reply_events(self, messages: list[dict], config: GenerationConfig, cancel: threading.Event,
                           priority: int = INTERACTIVE) -> AsyncIterator[Any]:
        """The reply to `messages` as it is generated: text deltas (str), and lm.serve.Queued / Started while
        it waits for and gets its place in the batch. Leaving early cancels it."""
        try:
            async for event in self.events(self.prompt(messages, config), config, cancel, priority):
                yield event
        finally:
            cancel.set()  # left early: the inner generator is closed only later, by the garbage collector

    async def events(self, ids: list[int], config: GenerationConfig, cancel: threading.Event,
                     priority: int = INTERACTIVE) -> AsyncIterator[Any]:
        """`reply_events` for a prompt given as token ids (a raw text completion)."""
        from lm.engine import Result

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        self.server.submit(ids, config, cancel, priority=priority,
                           listener=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        try:
            while not isinstance(event := await events.get(), Result):
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            cancel.set()

    def stream_chat(self, messages: list[dict], config: GenerationConfig, cancel: threading.Event | None = None,
                    priority: int = INTERACTIVE) -> Iterator[str]:
        """Text deltas of the reply to `messages` (blocking: for threads and the command line)."""
        yield from self._stream(self.prompt(messages, config), config, cancel, priority)

    def stream_text(self, prompt: str, config: GenerationConfig,
                    cancel: threading.Event | None = None) -> Iterator[str]:
        """Continue raw text without the chat template."""
        yield from self._stream(self.tokenizer.encode(prompt), config, cancel, INTERACTIVE)

    def _stream(self, ids: list[int], config: GenerationConfig, cancel: threading.Event | None, priority: int) -> Iterator[str]:
        ticket = self.server.submit(ids, config, cancel, priority=priority)
        try:
            yield from ticket
        finally:
            ticket.close()  # a reader that stops early ends the generation

    def spans(self, messages: list[dict], evidence: list[str], **options) -> list:
        """Answers copied from `evidence` (lm.spans.Span, best first) for the chat `messages`; see _copy_job.
        Blocking."""
        return self._copy_job(messages, evidence, **options).result()

    async def copy_spans(self, messages: list[dict], evidence: list[str], **options) -> list:
        """`spans` without blocking the event loop."""
        return await asyncio.wrap_future(self._copy_job(messages, evidence, **options))

    def _copy_job(self, messages: list[dict], evidence: list[str], *, baseline: list[dict] | None = None,
                  calibration: float = 0.0, max_tokens: int = 48, beams: int = 8, keep: int = 8):
        """Copy decoding as a job between the server's steps (a Future), rescored against the `baseline` chat
        when given (SpanDecoder.calibrated)."""
        return self.server.call(lambda: self._copy(messages, evidence, baseline, calibration, max_tokens,
                                                   beams, keep))

    def _copy(self, messages, evidence, baseline, calibration, max_tokens, beams, keep) -> list:
        from lm.spans import SpanDecoder

        def ids(chat: list[dict]) -> list[int]:
            return list(self.tokenizer.render_chat(chat, add_generation_prompt=True)[0])

        if self._spans is None:
            self._spans = SpanDecoder(self.model, self.tokenizer, max_len=self.context_tokens)
        spans = self._spans.spans(ids(messages), evidence, beams=beams, max_tokens=max_tokens, keep=keep)
        if baseline is not None and calibration:
            spans = self._spans.calibrated(spans, ids(baseline), calibration)
        return spans

    def close(self, wait: bool = True, cancel: bool = False) -> None:
        """Stop the server once the replies in flight have ended (wait=False: without waiting here; cancel: end
        them now). A program must close its models before it exits: the scheduler thread is a daemon, and one
        that is still inside torch when the interpreter finalizes aborts the process ("terminate called
        without an active exception", exit code 134)."""
        self.server.close(cancel=cancel, wait=wait)


class ModelManager:
    """Holds the active ChatModel; `swap` replaces it without disturbing replies in flight."""

    def __init__(self, settings: Settings, initial: ChatModel | None = None):
        self.settings = settings
        self._current = initial
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def remote(self) -> bool:
        """`[model] backend = "openai"`: the model runs in workers (bot.services.remote_model)."""
        return self.settings.model.backend == "openai"

    async def current(self) -> ChatModel:
        if self._current is None:
            async with self._lock:
                if self._current is None:
                    self._current = await self._load()
        return self._current

    def replies_in_flight(self) -> int:
        """Replies the active model is writing or about to write (0 while none is loaded)."""
        if self._current is None:
            return 0
        load = self._current.server.load()
        return load["running"] + load["waiting"]

    async def _load(self) -> ChatModel:
        if self.settings.model.backend not in ("local", "openai"):
            raise ValueError(f'[model] backend must be "local" or "openai", not {self.settings.model.backend!r}')
        if self.remote:
            from bot.services.remote_model import RemoteChatModel  # a cycle: it imports this gateway

            return await RemoteChatModel.connect(self.settings)
        return await in_own_thread(ChatModel.load, self.settings)

    def warm_up(self) -> asyncio.Task:
        """Load the model in the background (at start-up), so that the first message does not wait for it."""
        async def load() -> None:
            try:
                await self.current()
            except Exception:  # the first reply reports it to the user; the log says why
                log.exception("could not load the chat model at start-up")
        return asyncio.get_running_loop().create_task(load())

    def close(self) -> None:
        """Stop the active model's server now, cancelling what it runs, and wait for its thread (at exit)."""
        if self._current is not None:
            self._current.close(wait=True, cancel=True)

    async def swap(self, name_or_path: str, version_id: int | None = None) -> ChatModel:
        """Load another model (in a thread) and make it the active one. With workers, the active version's row
        (written by the caller) is what they follow: each loads it within its `[model] follow_s`
        (bot.services.worker_versions), and this process keeps its connection to them."""
        if self.remote:
            log.info("model version %s (%s) is active: the model workers that follow the database load it",
                     version_id, name_or_path)
            return await self.current()
        loaded = await in_own_thread(ChatModel.load, self.settings, name_or_path, version_id)
        async with self._lock:
            old, self._current = self._current, loaded
        log.info("active model is now %s (was %s)", loaded.label, old.label if old else None)
        if old is not None:
            old.close(wait=False)  # its replies in flight finish on it first
        return loaded
