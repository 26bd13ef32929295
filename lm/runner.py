"""The tensor side of lm.serve: the model, the KV slots and the prefix cache (lm.slots), prefill and decode.

The runner is told which request runs in which slot and at which positions (lm.scheduler decides); it runs the
forwards, samples, and moves keys and values between slots and the prefix cache. It keeps one invariant that no
caller has to remember: a row decoding alone runs on a float32 mirror of its slot (MirroredRow, which adds its
new positions to the mirror only), and every other read of a slot (a batched step, a copy to another slot, a
save to the prefix cache, the slot's request leaving) first writes the mirror's new positions to the store
(`_read`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lm.engine import sample_rows, sample_token
from lm.prefix import common_prefix
from lm.slots import MirroredRow, PrefixCache, SlotBatch, SlotStore

if TYPE_CHECKING:
    from lm.scheduler import Request


class ModelRunner:
    """Prefill and decode of requests in the KV slots of one model (see the module docstring). Used by one
    thread, lm.serve's, inside torch.inference_mode."""

    def __init__(self, model: torch.nn.Module, slots: int, max_len: int, cache_tokens: int,
                 kv_dtype: torch.dtype = torch.bfloat16):
        self.model = model
        self.store = SlotStore(model.config, slots, max_len, kv_dtype)
        self.prefixes = PrefixCache(cache_tokens)
        self._mirror: MirroredRow | None = None  # a lone decoding row's float32 keys and values

    # ------------------------------------------------------------------ memory
    @property
    def capacity(self) -> int:
        return self.store.capacity

    def reserve(self, n: int) -> None:
        self.store.reserve(n)

    def shrink(self, n: int) -> None:
        self.store.shrink(n)

    def save(self, slot: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A compact copy of the first n positions of a slot (SlotStore.save)."""
        self._read(slot)
        return self.store.save(slot, n)

    def evict(self, slot: int, ids: tuple[int, ...]) -> None:
        """Move the keys and values of `ids`, held in `slot`, to the prefix cache (the slot is given to another)."""
        self.prefixes.put(ids, self.save(slot, len(ids)))

    def release(self, slot: int) -> None:
        """The request in `slot` leaves: the store gets every key it added (the slot keeps them or is reused)."""
        self._read(slot)
        if self._mirror is not None and self._mirror.slot == slot:
            self._mirror = None

    def forget(self) -> None:
        self.prefixes.clear()

    def reuse(self, req: Request, donors: Sequence[tuple[int, Sequence[int]]]) -> None:
        """Before req's first chunk: copy into its slot the longest prefix of its prompt whose keys and values
        exist, in the prefix cache or in a donor slot (slot, ids held), unless its own slot holds a longer one."""
        want = req.prompt[:-1]  # the last prompt token always runs: its logits pick the first new token
        n, kv = self.prefixes.longest(want)
        donor = None
        for slot, ids in donors:
            shared = common_prefix(ids, want)
            if shared > n:
                n, donor = shared, slot
        if n <= req.pos:
            return  # its own parked keys, in place, are the longest
        if donor is not None:
            self._read(donor)
            self.store.copy(donor, req.slot, n)
        elif kv is not None:
            self.store.load(req.slot, kv, n)
        req.pos = req.reused = n

    def _read(self, slot: int) -> None:
        """Before the store's copy of `slot` is read: the mirror's positions are written to it."""
        if self._mirror is not None and self._mirror.slot == slot:
            self._mirror.sync()

    def _unmirror(self) -> None:
        if self._mirror is not None:
            self.release(self._mirror.slot)

    # ------------------------------------------------------------------ forwards
    def prefill(self, req: Request, n: int) -> int | None:
        """Run the next n prompt tokens of req into its slot; at the end of its prompt, its first new token."""
        self.store.reserve(req.pos + n)
        tokens = torch.tensor([req.prompt[req.pos:req.pos + n]])  # (1, n)
        logits = self.model(tokens, cache=self.store.row(req.slot, req.pos))  # (1, n, V)
        req.pos += n
        return self._sample(req, logits[0, -1].float()) if req.pos == len(req.prompt) else None

    def decode_alone(self, req: Request) -> int:
        """One decode step of a lone row, over exactly its own positions in float32, as the single-stream engine
        does (SDPA reads float32 keys directly, where a bf16 store would be converted at every step)."""
        self.store.reserve(req.pos + 1)
        if self._mirror is None or (self._mirror.slot, self._mirror.pos) != (req.slot, req.pos):
            self._unmirror()
            self._mirror = MirroredRow(self.store, req.slot, req.pos)
        logits = self.model(torch.tensor([[req.decoder.out[-1]]]), cache=self._mirror)  # (1, 1, V)
        req.pos += 1
        return self._sample(req, logits[0, -1].float())

    def decode_batch(self, reqs: Sequence[Request], lengths: list[int]) -> list[int]:
        """One forward of the last token of every request in reqs, each in its own slot row: rows 0..R-1 of the
        store at positions `lengths` (R,), where rows of no decoding request compute padding."""
        self._unmirror()
        tokens = torch.zeros(len(lengths), 1, dtype=torch.long)  # (R, 1)
        for r in reqs:
            tokens[r.slot, 0] = r.decoder.out[-1]
        cache = SlotBatch(self.store, torch.tensor(lengths, dtype=torch.long))
        logits = self.model(tokens, cache=cache)[:, -1].float()  # (R, V)
        for r in reqs:
            r.pos += 1
            r.decoder.constrain(logits[r.slot])
        return sample_rows(logits, [r.slot for r in reqs], [r.cfg for r in reqs], [r.decoder.generator for r in reqs])

    @staticmethod
    def _sample(req: Request, logits: torch.Tensor) -> int:
        """req's next token from its (V,) logits (changed in place), as Decoder.push picks it."""
        req.decoder.constrain(logits)
        return sample_token(logits, req.cfg, req.decoder.generator)
