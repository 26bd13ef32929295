"""The active chat model: loading, hot swapping, and streaming generation off the event loop.

This is the one place where `bot` talks to `lm.engine`. A reply takes a reference to the current
`ChatModel` when it starts, so a swap (a new model version promoted) never disturbs replies already
streaming: they finish on the model they began with.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

from bot.config import ModelSettings, Settings

log = logging.getLogger(__name__)

# One worker: generation already uses every core through torch's intra-op threads; two at once
# would only oversubscribe them. Replies queue here in arrival order.
_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docent-generate")


@dataclass
class Sampling:
    """Generation settings for one reply: the config defaults overridden per chat or per command."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    no_repeat_ngram: int = 0
    seed: int | None = None
    stop_strings: list[str] = field(default_factory=list)

    @classmethod
    def from_settings(cls, model: ModelSettings, **overrides: Any) -> Sampling:
        base = {f.name: getattr(model, f.name) for f in fields(cls) if hasattr(model, f.name)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


class ChatModel:
    """A loaded model with its tokenizer and engine, plus the version it came from."""

    def __init__(self, model: Any, tokenizer: Any, context_tokens: int, version_id: int | None = None,
                 label: str = ""):
        from lm.engine import Engine

        self.model, self.tokenizer = model, tokenizer
        self.context_tokens = min(context_tokens, model.config.max_seq_len)
        self.engine = Engine(model, tokenizer, max_len=self.context_tokens)
        self._spans = None  # lm.spans.SpanDecoder, made on the first document answer
        self.version_id = version_id
        self.label = label

    @classmethod
    def load(cls, settings: Settings, name_or_path: str | None = None, version_id: int | None = None) -> ChatModel:
        from pathlib import Path

        from lm.runtime import load_chat_model

        name = str(name_or_path or settings.model.name)
        if Path(name).expanduser().is_dir():  # a model trained or fine-tuned by docent
            model, tokenizer = _load_model_dir(Path(name).expanduser(), settings)
        else:
            model, tokenizer = load_chat_model(name, weights=settings.model.weights, threads=settings.model.threads,
                                               cache_dir=settings.cache_dir, max_seq_len=settings.model.context_tokens)
        return cls(model, tokenizer, settings.model.context_tokens, version_id, label=name)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def fit(self, messages: list[dict], sampling: Sampling) -> list[dict]:
        """Drop the oldest turns until the prompt and the reply fit the context (system prompt kept)."""
        from lm.engine import trim_messages

        reserve = min(sampling.max_new_tokens, self.context_tokens // 4)
        return trim_messages(messages, self.tokenizer, self.context_tokens, reserve)

    def _config(self, sampling: Sampling, prompt_tokens: int):
        from lm.engine import GenerationConfig

        room = self.context_tokens - prompt_tokens
        return GenerationConfig(
            max_new_tokens=max(1, min(sampling.max_new_tokens, room)),
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            no_repeat_ngram=sampling.no_repeat_ngram,
            seed=sampling.seed,
            stop_strings=tuple(sampling.stop_strings),
        )

    def stream_chat(self, messages: list[dict], sampling: Sampling,
                    cancel: threading.Event | None = None) -> Iterator[str]:
        """Text deltas of the reply to `messages` (blocking; run it in a worker thread)."""
        messages = self.fit(messages, sampling)
        ids, _ = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        yield from self.engine.stream(ids, self._config(sampling, len(ids)), cancel=cancel)

    def spans(self, messages: list[dict], evidence: list[str], *, baseline: list[dict] | None = None,
              calibration: float = 0.0, max_tokens: int = 48, beams: int = 8, keep: int = 8) -> list:
        """Answers copied from `evidence` (lm.spans.Span, best first) for the chat `messages`, rescored against
        the `baseline` chat when given (SpanDecoder.calibrated). Blocking."""
        from lm.spans import SpanDecoder

        def ids(chat: list[dict]) -> list[int]:
            return list(self.tokenizer.render_chat(chat, add_generation_prompt=True)[0])

        with self.engine.lock:  # one forward at a time on these weights, whatever the caller
            if self._spans is None:
                self._spans = SpanDecoder(self.model, self.tokenizer, max_len=self.context_tokens)
            spans = self._spans.spans(ids(messages), evidence, beams=beams, max_tokens=max_tokens, keep=keep)
            if baseline is not None and calibration:
                spans = self._spans.calibrated(spans, ids(baseline), calibration)
            return spans

    async def copy_spans(self, messages: list[dict], evidence: list[str], **options) -> list:
        """`spans` in the generation thread, queued behind the replies already generating."""
        return await asyncio.get_running_loop().run_in_executor(
            _EXECUTOR, lambda: self.spans(messages, evidence, **options))

    def stream_text(self, prompt: str, sampling: Sampling, cancel: threading.Event | None = None) -> Iterator[str]:
        """Continue raw text without the chat template."""
        ids = self.tokenizer.encode(prompt)
        yield from self.engine.stream(ids, self._config(sampling, len(ids)), cancel=cancel)


def _load_model_dir(path, settings: Settings):
    """A docent model directory (from scratch, full or LoRA fine-tune; LoRA merged) in the configured format."""
    from lm.checkpoint import load_model_dir
    from lm.model import Transformer
    from lm.quant import quantize_model
    from lm.runtime import set_threads

    set_threads(settings.model.threads)
    model, tokenizer, _ = load_model_dir(path)
    if not isinstance(model, Transformer):
        raise ValueError(f"{path} holds a {type(model).__name__}; only Transformer models can chat")
    return quantize_model(model.eval(), settings.model.weights), tokenizer


_END = object()


async def stream_in_thread(produce: Iterator[str] | Any, cancel: threading.Event) -> AsyncIterator[str]:
    """Run a blocking iterator of text deltas in the generation thread and yield its items here.

    Closing the async iterator early (timeout, error, /reset) sets `cancel`, which the engine checks
    between tokens, so the worker thread is free again within one token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def work() -> None:
        try:
            for delta in produce() if callable(produce) else produce:
                loop.call_soon_threadsafe(queue.put_nowait, delta)
                if cancel.is_set():
                    break
        except BaseException as e:  # handed to the awaiting side, which re-raises it
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    future = loop.run_in_executor(_EXECUTOR, work)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        await asyncio.shield(future)


class ModelManager:
    """Holds the active ChatModel; `swap` replaces it without disturbing replies in flight."""

    def __init__(self, settings: Settings, initial: ChatModel | None = None):
        self.settings = settings
        self._current = initial
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    async def current(self) -> ChatModel:
        if self._current is None:
            async with self._lock:
                if self._current is None:
                    self._current = await asyncio.get_running_loop().run_in_executor(
                        None, ChatModel.load, self.settings)
        return self._current

    def warm_up(self) -> asyncio.Task:
        """Load the model in the background (at start-up), so that the first message does not wait for it."""
        async def load() -> None:
            try:
                await self.current()
            except Exception:  # the first reply reports it to the user; the log says why
                log.exception("could not load the chat model at start-up")
        return asyncio.get_running_loop().create_task(load())

    async def swap(self, name_or_path: str, version_id: int | None = None) -> ChatModel:
        """Load another model (in a thread) and make it the active one."""
        loaded = await asyncio.get_running_loop().run_in_executor(
            None, ChatModel.load, self.settings, name_or_path, version_id)
        async with self._lock:
            old, self._current = self._current, loaded
        log.info("active model is now %s (was %s)", loaded.label, old.label if old else None)
        return loaded
