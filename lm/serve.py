"""Continuous batching: one scheduler thread owns the model and decodes every running request in one batch.

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
from dataclasses import dataclass, field
from typing import Any

import torch

from lm.engine import Decoder, GenerationConfig, Result, sample_rows, timings
from lm.prefix import common_prefix
from lm.slots import MirroredRow, PrefixCache, SlotBatch, SlotStore

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


@dataclass
class _Seq:
    prompt: list[int]
    cfg: GenerationConfig
    cancel: threading.Event
    listener: Callable[[Event], None]
    priority: int
    order: int
    decoder: Decoder
    submitted: float = field(default_factory=time.perf_counter)
    slot: int = -1
    pos: int = 0  # positions of this sequence in its slot
    reused: int = 0  # of them, copied from the prefix cache or another sequence
    prefilling: bool = False  # its prefill has begun (the cached prefix was looked up)
    ahead: int = -1  # the last Queued(ahead) sent
    started: float = 0.0
    prefill_s: float = 0.0
    first: float | None = None  # seconds from start to the first token

    def emit(self, event: Event) -> None:
        """Hand an event to the listener; a listener that fails cancels its own request, nothing else."""
        try:
            self.listener(event)
        except Exception:
            log.exception("a generation listener failed; its request is cancelled")
            self.cancel.set()

    @property
    def ids(self) -> list[int]:
        """The tokens whose keys/values are in the slot, in order."""
        return (self.prompt + self.decoder.out)[:self.pos]


# ---------------------------------------------------------------------------------------------- scheduler

class Server:
    """The continuous-batching scheduler (see the module docstring). Thread-safe: submit from anywhere."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_len: int | None = None, slots: int = 8,
                 prefill_chunk: int = 256, cache_tokens: int = 16384, kv_dtype: torch.dtype = torch.bfloat16):
        if slots < 1 or prefill_chunk < 1 or cache_tokens < 0:
            raise ValueError("slots and prefill_chunk must be >= 1 and cache_tokens >= 0")
        self.model, self.tokenizer = model, tokenizer
        self.max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.prefill_chunk = prefill_chunk
        self.store = SlotStore(model.config, slots, self.max_len, kv_dtype)
        self.prefixes = PrefixCache(cache_tokens)
        self._mirror: MirroredRow | None = None  # a lone decoding row's float32 keys and values
        self._free = list(range(slots))
        self._parked: dict[int, tuple[int, ...]] = {}  # slot -> ids of the finished sequence whose keys it holds
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []  # admitted: prefilling (pos < len(prompt)) or decoding
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
        seq = _Seq(prompt, cfg, ticket.cancel, listener or ticket._events.put, priority, next(self._order), decoder)
        with self._wake:
            if self._closed:
                raise RuntimeError("the server is closed")
            self._waiting.append(seq)
            self._waiting.sort(key=lambda s: (s.priority, s.order))
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
            return {"waiting": len(self._waiting), "running": len(self._running),
                    "cached_tokens": self.prefixes.tokens, "parked_tokens": sum(map(len, self._parked.values()))}

    def forget(self) -> Future:
        """Drop every kept prefix (the prefix cache and the parked slots), between two steps; a Future."""
        def drop() -> None:
            with self._wake:
                self.prefixes.clear()
                self._free += list(self._parked)
                self._parked.clear()
        return self.call(drop)

    def close(self, cancel: bool = True, wait: bool = True) -> None:
        """Stop taking requests and stop the scheduler thread once nothing runs: at once, cancelling what runs
        and waits (cancel=True), or after those have finished (cancel=False). wait: join the thread."""
        with self._wake:
            self._closed = True
            if cancel:
                for seq in self._waiting + self._running:
                    seq.cancel.set()
            self._wake.notify()
        if wait:
            self._thread.join(timeout=None if not cancel else 30)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        with torch.inference_mode():  # every tensor of the store and the prefix cache is made and used here
            while self._next():
                pass

    def _next(self) -> bool:
        """Wait for work, admit, run one step; False once closed and idle."""
        with self._wake:
            while not self._closed and not self._waiting and not self._running and not self._jobs:
                self._wake.wait()
            if self._closed and not self._waiting and not self._running and not self._jobs:
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
                self._drop_cancelled_waiting()
                self._admit()
            self._step()
        except BaseException as e:  # a failed step ends the requests in it, never the scheduler
            log.exception("generation step failed")
            for seq in list(self._running):
                self._end(seq, error=e)
        return True

    def _drop_cancelled_waiting(self) -> None:
        for seq in [s for s in self._waiting if s.cancel.is_set()]:
            self._waiting.remove(seq)
            seq.decoder.finish = "cancelled"
            seq.emit(seq.decoder.result(timings(seq.submitted, 0.0, None, 0, 0)))

    def _admit(self) -> None:
        """Give slots to waiting requests in order; tell the others their place."""
        while self._waiting and (self._free or self._parked):
            seq = self._waiting.pop(0)
            self._take_slot(seq)
            seq.started = time.perf_counter()
            self._running.append(seq)
            seq.emit(Started())
        for ahead, seq in enumerate(self._waiting):
            if seq.ahead != ahead:
                seq.ahead = ahead
                seq.emit(Queued(ahead))

    def _take_slot(self, seq: _Seq) -> None:
        """The slot parked with seq's previous turn (all of it a prefix of the prompt: used in place), else the
        lowest free or parked one (a decode step computes rows up to the highest in use); a parked slot's keys
        and values move to the prefix cache first."""
        want = seq.prompt[:-1] if seq.cfg.reuse_cache else []
        own = [slot for slot, ids in self._parked.items() if common_prefix(ids, want) == len(ids)]
        if own:
            seq.slot = max(own, key=lambda slot: len(self._parked[slot]))
            seq.pos = seq.reused = len(self._parked.pop(seq.slot))
            return
        seq.slot = min(self._free + list(self._parked))
        if seq.slot in self._parked:
            ids = self._parked.pop(seq.slot)
            self.prefixes.put(ids, self.store.save(seq.slot, len(ids)))
        else:
            self._free.remove(seq.slot)

    def _step(self) -> None:
        """One scheduler step: cancellations, prefill chunks within the token budget, one batched decode."""
        for seq in [s for s in self._running if s.cancel.is_set()]:
            seq.decoder.finish = "cancelled"
            self._end(seq)
        budget = self.prefill_chunk
        for seq in [s for s in self._running if s.pos < len(s.prompt)]:
            if budget <= 0:
                break
            budget -= self._prefill(seq, budget)
        decoding = [s for s in self._running if s.pos >= len(s.prompt) and s.decoder.out and not s.decoder.finish]
        if decoding:
            self._decode(decoding)

    def _reuse(self, seq: _Seq) -> None:
        """Before seq's first chunk: copy the longest prefix of its prompt whose keys/values exist, from the prefix
        cache or from another slot (chats that share a system prompt), unless its own slot holds a longer one."""
        want = seq.prompt[:-1]  # the last prompt token always runs: its logits pick the first new token
        n, kv = self.prefixes.longest(want)
        donor = None
        slots = [(o.slot, o.ids) for o in self._running if o is not seq and o.pos > n] + list(self._parked.items())
        for slot, ids in slots:
            shared = common_prefix(ids, want)
            if shared > n:
                n, donor = shared, slot
        if n <= seq.pos:
            return  # its own parked keys, in place, are the longest
        if donor is not None:
            if self._mirror is not None and self._mirror.slot == donor:
                self._mirror.sync()
            self.store.copy(donor, seq.slot, n)
        elif kv is not None:
            self.store.load(seq.slot, kv, n)
        seq.pos = seq.reused = n

    def _prefill(self, seq: _Seq, budget: int) -> int:
        """Prefill up to `budget` more prompt tokens of seq; at the end of the prompt, pick its first token."""
        t0 = time.perf_counter()
        if not seq.prefilling and seq.cfg.reuse_cache:
            self._reuse(seq)
        seq.prefilling = True
        n = min(budget, len(seq.prompt) - seq.pos)
        self.store.reserve(seq.pos + n)
        logits = self.model(torch.tensor([seq.prompt[seq.pos:seq.pos + n]]), cache=self.store.row(seq.slot, seq.pos))
        seq.pos += n
        seq.prefill_s += time.perf_counter() - t0
        if seq.pos == len(seq.prompt):
            self._push(seq, logits[0, -1].float())
        return n

    def _decode(self, seqs: list[_Seq]) -> None:
        """One forward of the last token of every decoding sequence, each in its own slot row."""
        if len(seqs) == 1:  # one row: over exactly its own positions in float32, as the single-stream engine does
            seq = seqs[0]
            self.store.reserve(seq.pos + 1)
            if self._mirror is None or (self._mirror.slot, self._mirror.pos) != (seq.slot, seq.pos):
                self._mirror = MirroredRow(self.store, seq.slot, seq.pos)
            logits = self.model(torch.tensor([[seq.decoder.out[-1]]]), cache=self._mirror)
            seq.pos += 1
            self._push(seq, logits[0, -1].float())
            return
        self._unmirror()
        rows = max(s.slot for s in seqs) + 1
        tokens = torch.zeros(rows, 1, dtype=torch.long)  # rows of no decoding sequence compute padding
        lengths = torch.zeros(rows, dtype=torch.long)
        for s in self._running:
            if s.slot < rows:
                lengths[s.slot] = s.pos  # a prefilling row's padding key is overwritten by its next chunk
        self.store.reserve(int(lengths.max()) + 1)
        for slot, ids in list(self._parked.items()):
            if slot < rows:  # a parked row's padding key goes after its keys (over the last one, if it is full)
                lengths[slot] = at = min(len(ids), self.store.capacity - 1)
                if at < len(ids):
                    self._parked[slot] = ids[:at]
        for s in seqs:
            tokens[s.slot, 0] = s.decoder.out[-1]
        logits = self.model(tokens, cache=SlotBatch(self.store, lengths))[:, -1].float()  # (rows, V)
        for s in seqs:
            s.pos += 1
            s.decoder.constrain(logits[s.slot])
        picked = sample_rows(logits, [s.slot for s in seqs], [s.cfg for s in seqs],
                             [s.decoder.generator for s in seqs])
        for s, tok in zip(seqs, picked, strict=True):
            self._accepted(s, s.decoder.accept(tok))

    def _unmirror(self) -> None:
        """Back to the store alone: a lone row's added positions are written to it first."""
        if self._mirror is not None:
            self._mirror.sync()
            self._mirror = None

    def _push(self, seq: _Seq, logits: torch.Tensor) -> None:
        """Sample seq's next token from its (V,) logits and emit its text; end it when it stops."""
        self._accepted(seq, seq.decoder.push(logits))

    def _accepted(self, seq: _Seq, delta: str) -> None:
        if seq.first is None:
            seq.first = time.perf_counter() - seq.started
        if delta:
            seq.emit(delta)
        if seq.decoder.finish:
            self._end(seq)

    def _end(self, seq: _Seq, error: BaseException | None = None) -> None:
        """Leave the batch: keep the keys/values for a next turn, free the slot, send the Result (or error)."""
        self._running.remove(seq)
        if self._mirror is not None and self._mirror.slot == seq.slot:
            self._unmirror()  # the store gets every key it added: the slot keeps them (parked) or is reused
        with self._wake:
            if error is None and seq.pos > 1:
                ids = tuple(seq.ids)
                self.prefixes.drop_prefixes_of(ids)  # (the entry this turn began from, if any)
                self._parked[seq.slot] = ids
            else:
                self._free.append(seq.slot)
        self.store.shrink(max([s.pos + 1 for s in self._running] + [len(ids) for ids in self._parked.values()],
                              default=0))
        if error is not None:
            seq.emit(error)
            return
        tail = seq.decoder.flush()
        if tail:
            seq.emit(tail)
        t = timings(seq.started, seq.prefill_s, seq.first, len(seq.prompt) - seq.reused, len(seq.decoder.out))
        t["queue_s"] = seq.started - seq.submitted
        seq.emit(seq.decoder.result(t))
