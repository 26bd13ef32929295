"""The policy of lm.serve: which requests wait, run or stay parked, and which KV slot each one gets. No tensors.

- waiting: requests in the order they are admitted, interactive (priority 0) before background ones, then in
  arrival order; admitted while a slot is free or parked.
- running: admitted requests, prefilling (pos < len(prompt)) or decoding, each in its own slot.
- parked: slot -> the ids of a finished request whose keys and values stay in that slot, so that its chat's next
  turn is admitted there and prefills only its new tokens.

lm.runner does the tensor work these decisions call for; lm.serve's step joins the two.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lm.engine import Decoder, GenerationConfig
from lm.prefix import common_prefix

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One submitted generation and where it stands: its slot and how many of its positions that slot holds."""

    prompt: list[int]
    cfg: GenerationConfig
    cancel: threading.Event
    listener: Callable[[Any], None]
    priority: int
    order: int
    decoder: Decoder
    submitted: float = field(default_factory=time.perf_counter)
    slot: int = -1
    pos: int = 0  # positions of this request in its slot
    reused: int = 0  # of them, copied from the prefix cache or another slot, or parked there by its previous turn
    prefilling: bool = False  # its prefill has begun (the cached prefix was looked up)
    ahead: int = -1  # the last Queued(ahead) sent
    started: float = 0.0
    prefill_s: float = 0.0
    first: float | None = None  # seconds from start to the first token

    def emit(self, event: Any) -> None:
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

    @property
    def decoding(self) -> bool:
        return self.pos >= len(self.prompt) and bool(self.decoder.out) and not self.decoder.finish


class Scheduler:
    """Waiting, running and parked requests over `slots` KV slots (see the module docstring). Not locked: the
    server holds its lock around the calls that other threads race with (add, admit, finish, load)."""

    def __init__(self, slots: int):
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.free = list(range(slots))
        self.parked: dict[int, tuple[int, ...]] = {}

    def add(self, req: Request) -> None:
        self.waiting.append(req)
        self.waiting.sort(key=lambda r: (r.priority, r.order))

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def cancelled_waiting(self) -> list[Request]:
        """Take the cancelled requests out of the queue (they never get a slot)."""
        gone = [r for r in self.waiting if r.cancel.is_set()]
        for req in gone:
            self.waiting.remove(req)
            req.decoder.finish = "cancelled"
        return gone

    def cancelled_running(self) -> list[Request]:
        """The running requests cancelled since the last step (the caller ends them)."""
        gone = [r for r in self.running if r.cancel.is_set()]
        for req in gone:
            req.decoder.finish = "cancelled"
        return gone

    def admit(self) -> tuple[list[Request], list[tuple[int, tuple[int, ...]]]]:
        """Give slots to waiting requests in order: (the admitted, the parked slots they took, with the ids whose
        keys those hold: the caller moves them to the prefix cache before anything writes there)."""
        admitted, evicted = [], []
        while self.waiting and (self.free or self.parked):
            req = self.waiting.pop(0)
            if (ids := self._take_slot(req)) is not None:
                evicted.append((req.slot, ids))
            req.started = time.perf_counter()
            self.running.append(req)
            admitted.append(req)
        return admitted, evicted

    def places(self) -> list[tuple[Request, int]]:
        """(request, ahead) for every waiting request whose place in the queue changed since it was last told."""
        moved = []
        for ahead, req in enumerate(self.waiting):
            if req.ahead != ahead:
                req.ahead = ahead
                moved.append((req, ahead))
        return moved

    def _take_slot(self, req: Request) -> tuple[int, ...] | None:
        """The slot parked with req's previous turn (all of it a prefix of the prompt: used in place), else the
        lowest free or parked one (a decode step computes rows up to the highest in use). Returns the ids of the
        finished request whose slot it took, if it took a parked one."""
        want = req.prompt[:-1] if req.cfg.reuse_cache else []
        own = [slot for slot, ids in self.parked.items() if common_prefix(ids, want) == len(ids)]
        if own:
            req.slot = max(own, key=lambda slot: len(self.parked[slot]))
            req.pos = req.reused = len(self.parked.pop(req.slot))
            return None
        req.slot = min(self.free + list(self.parked))
        if req.slot in self.parked:
            return self.parked.pop(req.slot)
        self.free.remove(req.slot)
        return None

    def prefilling(self) -> list[Request]:
        return [r for r in self.running if r.pos < len(r.prompt)]

    def decoding(self) -> list[Request]:
        return [r for r in self.running if r.decoding]

    def donors(self, req: Request) -> list[tuple[int, list[int] | tuple[int, ...]]]:
        """(slot, ids) of every other slot that holds keys: running requests' and parked ones."""
        return [(o.slot, o.ids) for o in self.running if o is not req] + list(self.parked.items())

    def positions(self, rows: int) -> list[int]:
        """Where each of slots 0..rows-1 writes its next key in a batched decode step: a running request's
        position (a prefilling row's padding key is overwritten by its next chunk); 0 for a free slot."""
        lengths = [0] * rows
        for r in self.running:
            if r.slot < rows:
                lengths[r.slot] = r.pos
        return lengths

    def place_parked(self, lengths: list[int], last: int) -> None:
        """A parked row's padding key goes after its keys, or over the last one when the slot is full (position
        `last`): then the parked ids lose that position."""
        for slot, ids in list(self.parked.items()):
            if slot < len(lengths):
                lengths[slot] = at = min(len(ids), last)
                if at < len(ids):
                    self.parked[slot] = ids[:at]

    def finish(self, req: Request, keep: bool) -> tuple[int, ...] | None:
        """req leaves the batch: its slot is parked with its ids, which are returned (keep), or freed."""
        self.running.remove(req)
        if keep and req.pos > 1:
            self.parked[req.slot] = ids = tuple(req.ids)
            return ids
        self.free.append(req.slot)
        return None

    def unpark_all(self) -> None:
        self.free += list(self.parked)
        self.parked.clear()

    def longest(self) -> int:
        """Positions the slots must keep: the longest running request's next one, or the longest parked."""
        return max([r.pos + 1 for r in self.running] + [len(ids) for ids in self.parked.values()], default=0)

    def parked_tokens(self) -> int:
        return sum(map(len, self.parked.values()))
