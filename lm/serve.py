"""Continuous batching: one thread owns the model and decodes every running request in one batch.

    server = Server(model, tokenizer, slots=8)
    ticket = server.submit(prompt_ids, GenerationConfig(temperature=0.7, seed=1))
    for delta in ticket:                     # blocking; or submit(..., listener=fn) to receive events
        print(delta, end="")
    ticket.result                            # lm.engine.Result
    server.close()

How a request runs (in the spirit of vLLM's continuous batching and SGLang's prefix cache, kept small):
- It waits in a queue until one of the `slots` rows of the KV store is free; interactive requests (priority 0)
  are admitted before background ones (summaries, evals), then in arrival order. While waiting, its listener
  gets `Queued(ahead)` whenever its place changes, and `Started()` when it is admitted.
- It is admitted to the slot that still holds its chat's previous turn, if one does, and uses those keys and
  values in place; else to the lowest slot that is free or holds another finished request's keys (which then
  move to the `PrefixCache`, least recently used evicted beyond `cache_tokens`). It looks up the longest prefix
  of its prompt whose keys and values exist: in its own slot, in the prefix cache, or in the slot of another
  request, running or finished (chats that share a system prompt, as SGLang's radix cache shares them). It
  copies that prefix into its row and prefills only the rest, in chunks: each scheduler step
  prefills at most `prefill_chunk` tokens in all, so a newcomer's long prompt delays the running streams by
  one chunk per token, not by the whole prompt.
- Every step then runs ONE forward for every decoding request, (R, 1) tokens at per-row positions
  (`SlotBatch`): reading the weights once for R rows is what makes batching pay on a memory-bound CPU. Their
  next tokens are sampled together (lm.engine.sample_rows). A lone decoding row attends over exactly its own
  positions, in float32 (`MirroredRow`), as the single-stream engine does.
- Each request keeps its own sampling settings, seed, stop ids and strings, streaming and cancellation
  (lm.engine.Decoder); it leaves the batch at the token boundary where it stops, and its keys/values stay in
  its slot (parked) so that the chat's next turn prefills only its new tokens, with nothing copied.

Three parts, as in nano-vllm: `Server` (here) is the thread and queue the bot talks to and the short `step`;
lm.scheduler.Scheduler is the policy (waiting, running and parked requests, admission, priority, which slot);
lm.runner.ModelRunner is the tensors (the slots, the prefix cache, prefill and decode, the float32 mirror).

Memory (lm/slots.py): the store holds slots x capacity positions of n_layers x 2 x n_kv_heads x head_dim
values in `kv_dtype` (bf16: 23 KB per position for SmolLM2-135M, so 8 slots x 2,048 = 377 MB at most); the
capacity follows the longest sequence running or parked. The prefix cache holds at most `cache_tokens` positions more.
Requests beyond the free slots wait; none fails for lack of memory.

Greedy output equals the single-stream engine's except where kernels round differently for R rows than for
one (a bf16 cache read by matmuls, the head's FBGEMM quantizing R rows with one scale), so two logits within a
small tolerance may swap (tests/unit/test_serve.py and tests/integration/test_serve_real.py).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from lm.engine import Decoder, GenerationConfig, Result, timings
from lm.runner import ModelRunner
from lm.scheduler import Request, Scheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queued:
    """An event: the request waits, with `ahead` requests to be admitted before it."""

    ahead: int


@dataclass(frozen=True)
class Started:
    """An event: the request has a slot and its prompt is being prefilled."""


Event = str | Queued | Started | Result | BaseException  # a text delta, a state, the end, or the error


# ---------------------------------------------------------------------------------------------- requests

class Ticket:
    """A submitted request: iterate it for text deltas (blocking); `.result` is set at the end."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.result: Result | None = None
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[str]:
        while True:
            event = self._events.get()
            if isinstance(event, Result):
                self.result = event
                return
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, str):
                yield event

    def close(self) -> None:
        """Stop generating (the request leaves the batch at the next token)."""
        self.cancel.set()


# ---------------------------------------------------------------------------------------------- server

class Server:
    """The thread and queue in front of continuous batching (see the module docstring): requests are submitted
    from anywhere; one thread owns the model and runs `step` after step. Thread-safe."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_len: int | None = None, slots: int = 8,
                 prefill_chunk: int = 256, cache_tokens: int = 16384, kv_dtype: torch.dtype = torch.bfloat16):
        if slots < 1 or prefill_chunk < 1 or cache_tokens < 0:
            raise ValueError("slots and prefill_chunk must be >= 1 and cache_tokens >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.prefill_chunk = prefill_chunk
        self.scheduler = Scheduler(slots)  # policy: waiting, running, parked; touched by submit under _wake
        self.runner = ModelRunner(model, slots, self.max_len, cache_tokens, kv_dtype)  # tensors: this thread only
        self._jobs: list[tuple[Callable[[], Any], Future]] = []  # work that needs the model alone (call)
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="docent-serve", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def submit(self, prompt_ids: Sequence[int], cfg: GenerationConfig | None = None,
               cancel: threading.Event | None = None, listener: Callable[[Event], None] | None = None,
               priority: int = 0) -> Ticket:
        """Queue a request. Events go to `listener` (called in the scheduler thread: keep it quick) or, without
        one, to the returned Ticket's iterator. priority 0 = interactive, higher = background."""
        prompt = list(prompt_ids)
        cfg = cfg or GenerationConfig()
        # an empty prompt, or one that leaves no room for a new token, is refused here (lm.engine.reply_budget)
        decoder = Decoder(self.tokenizer, prompt, cfg, self.max_len)
        ticket = Ticket(cancel or threading.Event())
        req = Request(prompt, cfg, ticket.cancel, listener or ticket._events.put, priority, next(self._order),
                      decoder)
        with self._wake:
            if self._closed:
                raise RuntimeError("the server is closed")
            self.scheduler.add(req)
            self._wake.notify()
        return ticket

    def generate(self, prompt_ids: Sequence[int], cfg: GenerationConfig | None = None,
                 cancel: threading.Event | None = None, priority: int = 0) -> Result:
        """Submit and wait for the whole answer."""
        ticket = self.submit(prompt_ids, cfg, cancel, priority=priority)
        for _ in ticket:
            pass
        return ticket.result

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run fn in the scheduler thread between two steps, with the model to itself (other work on the same
        weights, such as lm.spans, that would otherwise fight the batch for the same cores); a Future of its
        result. The running streams pause while it runs."""
        future: Future = Future()
        with self._wake:
            if self._closed:
                raise RuntimeError("the server is closed")
            self._jobs.append((fn, future))
            self._wake.notify()
        return future

    def load(self) -> dict[str, int]:
        """How many requests wait and run, and the positions the prefix cache and the parked slots hold."""
        with self._wake:
            return {"waiting": len(self.scheduler.waiting), "running": len(self.scheduler.running),
                    "cached_tokens": self.runner.prefixes.tokens, "parked_tokens": self.scheduler.parked_tokens()}

    def forget(self) -> Future:
        """Drop every kept prefix (the prefix cache and the parked slots), between two steps; a Future."""
        def drop() -> None:
            with self._wake:
                self.runner.forget()
                self.scheduler.unpark_all()
        return self.call(drop)

    def close(self, cancel: bool = True, wait: bool = True) -> None:
        """Stop taking requests and stop the scheduler thread once nothing runs: at once, cancelling what runs
        and waits (cancel=True), or after those have finished (cancel=False). wait: join the thread."""
        with self._wake:
            self._closed = True
            if cancel:
                for req in self.scheduler.waiting + self.scheduler.running:
                    req.cancel.set()
            self._wake.notify()
        if wait:
            self._thread.join(timeout=None if not cancel else 30)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        with torch.inference_mode():  # every tensor of the slots and the prefix cache is made and used here
            while self._next():
                pass

    def _next(self) -> bool:
        """Wait for work, run the jobs, admit, run one step; False once closed and idle."""
        with self._wake:
            while not self._closed and self.scheduler.idle and not self._jobs:
                self._wake.wait()
            if self._closed and self.scheduler.idle and not self._jobs:
                return False
            jobs, self._jobs = self._jobs, []
        for fn, future in jobs:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:
                    future.set_exception(e)
        try:
            with self._wake:
                self._admit()
            self.step()
        except BaseException as e:  # a failed step ends the requests in it, never the scheduler
            log.exception("generation step failed")
            for req in list(self.scheduler.running):
                self._end(req, error=e)
        return True

    def _admit(self) -> None:
        """Drop the cancelled waiting requests, give slots to the next ones, tell the others their place."""
        for req in self.scheduler.cancelled_waiting():
            req.emit(req.decoder.result(timings(req.submitted, 0.0, None, 0, 0)))
        admitted, evicted = self.scheduler.admit()
        for slot, ids in evicted:  # before anything writes to the slot
            self.runner.evict(slot, ids)
        for req in admitted:
            req.emit(Started())
        for req, ahead in self.scheduler.places():
            req.emit(Queued(ahead))

    def step(self) -> None:
        """One step: end the cancelled, prefill chunks within the token budget, one batched decode."""
        for req in self.scheduler.cancelled_running():
            self._end(req)
        budget = self.prefill_chunk
        for req in self.scheduler.prefilling():
            if budget <= 0:
                break
            budget -= self._prefill(req, budget)
        if decoding := self.scheduler.decoding():
            for req, tok in zip(decoding, self._decode(decoding), strict=True):
                self._accepted(req, tok)

    def _prefill(self, req: Request, budget: int) -> int:
        """Prefill up to `budget` more prompt tokens of req (after its first lookup of a cached prefix); at the
        end of the prompt, accept its first token."""
        t0 = time.perf_counter()
        if not req.prefilling and req.cfg.reuse_cache:
            self.runner.reuse(req, self.scheduler.donors(req))
        req.prefilling = True
        n = min(budget, len(req.prompt) - req.pos)
        tok = self.runner.prefill(req, n)
        req.prefill_s += time.perf_counter() - t0
        if tok is not None:
            self._accepted(req, tok)
        return n

    def _decode(self, reqs: list[Request]) -> list[int]:
        """The next token of every decoding request: alone over its own positions, or in one batch of slot rows
        up to the highest in use, where the other rows (prefilling, parked, free) write a padding key."""
        if len(reqs) == 1:
            return [self.runner.decode_alone(reqs[0])]
        lengths = self.scheduler.positions(max(r.slot for r in reqs) + 1)
        self.runner.reserve(max(lengths) + 1)
        self.scheduler.place_parked(lengths, self.runner.capacity - 1)
        return self.runner.decode_batch(reqs, lengths)

    def _accepted(self, req: Request, tok: int) -> None:
        """Record req's new token and emit its text; end it when it stops."""
        delta = req.decoder.accept(tok)
        if req.first is None:
            req.first = time.perf_counter() - req.started
        if delta:
            req.emit(delta)
        if req.decoder.finish:
            self._end(req)

    def _end(self, req: Request, error: BaseException | None = None) -> None:
        """Leave the batch: keep the keys/values for a next turn, free the slot, send the Result (or error)."""
        self.runner.release(req.slot)
        with self._wake:
            ids = self.scheduler.finish(req, keep=error is None)
            if ids is not None:
                self.runner.prefixes.drop_prefixes_of(ids)  # (the entry this turn began from, if any)
        self.runner.shrink(self.scheduler.longest())
        if error is not None:
            req.emit(error)
            return
        tail = req.decoder.flush()
        if tail:
            req.emit(tail)
        t = timings(req.started, req.prefill_s, req.first, len(req.prompt) - req.reused, len(req.decoder.out))
        t["queue_s"] = req.started - req.submitted
        req.emit(req.decoder.result(t))
