"""The KV-slot memory of lm.serve: the slot store, the caches one batched step reads it through, and the
prefix cache.

- `SlotStore`: keys and values of every slot, its capacity growing with the longest sequence it holds.
- `SlotBatch`: the cache of one decode step of R rows, each at its own position.
- `MirroredRow`: a float32 copy of one slot's keys and values, for a row decoding alone.
- `PrefixCache`: the keys and values of finished requests' prompts, least recently used evicted first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from lm.model import KVCache
from lm.prefix import common_prefix


class SlotStore:
    """Keys and values of `slots` sequences: n_layers tensors of (slots, n_kv_heads, capacity, head_dim) each.

    The capacity grows (by half, in steps of 128 positions, up to max_len) as the longest sequence in it
    needs, and shrinks when the long ones have left: a batch attends over the whole capacity, because a
    contiguous (rows x capacity) block multiplies 8x faster than a slice of a larger one (measured: 60 us
    against 470 us for 8 rows at 451 positions, bf16, 1 thread), and masking the unused positions is cheaper
    than copying the used ones. Each layer has its own tensors, so growing copies one layer at a time: a store of
    one tensor held its old and new copies at once (472 MB for 8 slots growing from 1,024 to 1,536 positions).
    """

    STEP = 128

    def __init__(self, config: Any, slots: int, max_len: int, dtype: torch.dtype = torch.bfloat16):
        self.shape = (slots, config.n_kv_heads, 0, config.head_dim)  # per layer
        self.max_len, self.dtype = max_len, dtype
        self.k = [torch.empty(self.shape, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.empty(self.shape, dtype=dtype) for _ in range(config.n_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, n: int) -> None:
        """Room for n positions in every slot."""
        if n > self.capacity:
            self._resize(min(self.max_len, _round_up(max(n, self.capacity * 3 // 2), self.STEP)))

    def shrink(self, n: int) -> None:
        """Give back memory beyond n positions (rounded up) when that halves the capacity or more."""
        if _round_up(n, self.STEP) * 2 <= self.capacity:
            self._resize(_round_up(max(n, 1), self.STEP))

    def _resize(self, cap: int) -> None:
        keep = min(cap, self.capacity)
        for tensors in (self.k, self.v):
            for layer, old in enumerate(tensors):
                new = torch.zeros(self.shape[:2] + (cap,) + self.shape[3:], dtype=self.dtype)  # masked keys: finite
                new[:, :, :keep] = old[:, :, :keep]
                tensors[layer] = new  # the old one is freed before the next layer's is made

    def row(self, slot: int, pos: int) -> KVCache:
        """A one-row cache over slot `slot`, with `pos` positions filled (for prefill)."""
        return KVCache.over([k[slot:slot + 1] for k in self.k], [v[slot:slot + 1] for v in self.v], pos)

    def save(self, slot: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A compact copy of the first n positions of a slot, (n_layers, KV, n, D) each."""
        return torch.stack([k[slot, :, :n] for k in self.k]), torch.stack([v[slot, :, :n] for v in self.v])

    def load(self, slot: int, kv: tuple[torch.Tensor, torch.Tensor], n: int) -> None:
        self.reserve(n)
        for tensors, saved in zip((self.k, self.v), kv, strict=True):
            for layer, t in enumerate(tensors):
                t[slot, :, :n] = saved[layer, :, :n]

    def copy(self, source: int, slot: int, n: int) -> None:
        """The first n positions of slot `source` into slot `slot`."""
        for t in self.k + self.v:
            t[slot, :, :n] = t[source, :, :n]


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class SlotBatch:
    """A cache for one decode step of rows 0..R-1 of a SlotStore, each at its own position (lengths[r])."""

    def __init__(self, store: SlotStore, lengths: torch.Tensor):
        store.reserve(int(lengths.max()) + 1)
        self.store, self.lengths = store, lengths  # (R,) positions filled per row = where the new token goes
        KV, capacity = store.shape[1], store.capacity
        # where each row's new key goes for each kv head, as rows of a layer's store seen as (slots*KV*capacity, D):
        # one index_copy_ instead of an advanced-index assignment (~9 against ~17 us, 60 times a step)
        rows = torch.arange(len(lengths))[:, None] * KV + torch.arange(KV)  # (R, KV)
        self._where = (rows * capacity + lengths[:, None]).view(-1)
        self._keys = torch.arange(store.capacity)
        hidden = (self._keys[None, :] > lengths[:, None])[:, None, None, :]  # (R, 1, 1, capacity)
        self._mask = torch.zeros(hidden.shape).masked_fill_(hidden, float("-inf"))  # an additive bias: see lm.model
        self._window_masks: dict[int, torch.Tensor] = {}  # window -> the same for local layers

    def rope(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        return cos[self.lengths][:, None, None], sin[self.lengths][:, None, None]  # (R, 1, 1, D)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (R, KV, 1, D) at each row's position; return (R, KV, capacity, D) keys/values."""
        R, store = len(self.lengths), self.store
        keys, values = store.k[layer], store.v[layer]  # (slots, KV, capacity, D)
        D = keys.shape[-1]
        keys.view(-1, D).index_copy_(0, self._where, k.to(store.dtype).reshape(-1, D))
        values.view(-1, D).index_copy_(0, self._where, v.to(store.dtype).reshape(-1, D))
        return keys[:R], values[:R]

    def mask(self, T: int, window: int = 0) -> tuple[torch.Tensor, bool]:
        """The additive (R, 1, 1, capacity) mask; window > 0: a local layer's, which also hides the keys that are
        `window` or more positions behind the row's new token."""
        if not window:
            return self._mask, False
        if window not in self._window_masks:
            old = (self._keys[None, :] <= self.lengths[:, None] - window)[:, None, None, :]
            self._window_masks[window] = self._mask.masked_fill(old, float("-inf"))
        return self._window_masks[window], False

    def advance(self, T: int) -> None:
        pass  # the scheduler keeps each sequence's position


class MirroredRow(KVCache):
    """One slot's keys and values in float32, for a sequence decoding alone (lm.runner.ModelRunner.decode_alone).

    SDPA reads float32 keys directly, where reading the bf16 store converts all of them at every step, which made
    a lone row's decode step 1.1-1.2x the single-stream engine's at 1,024 positions. The copy is made once when a
    sequence starts decoding alone; the positions it adds reach the store with `sync`, which the runner calls
    before anything else reads that slot (a batch step, the prefix cache, a newcomer copying its prefix). Pages of
    the copy are touched only up to the sequence's length (calloc'd zeros).
    """

    def __init__(self, store: SlotStore, slot: int, pos: int):
        shape = (1, store.shape[1], store.max_len, store.shape[3])
        keys = [torch.zeros(shape) for _ in store.k]
        values = [torch.zeros(shape) for _ in store.v]
        for mirror, source in zip(keys + values, store.k + store.v, strict=True):
            mirror[0, :, :pos] = source[slot, :, :pos]
        self.max_len, self.pos, self._mask, self._window_mask = store.max_len, pos, None, None
        self._layers = tuple(zip(keys, values, strict=True))
        self.store, self.slot, self.synced = store, slot, pos  # the store holds the slot's positions up to synced

    def sync(self) -> None:
        """Write the positions added since the copy (or the last sync) to the store."""
        if self.synced < self.pos:
            for (keys, values), store_k, store_v in zip(self._layers, self.store.k, self.store.v, strict=True):
                store_k[self.slot, :, self.synced:self.pos] = keys[0, :, self.synced:self.pos]
                store_v[self.slot, :, self.synced:self.pos] = values[0, :, self.synced:self.pos]
            self.synced = self.pos


class PrefixCache:
    """Keys and values of finished sequences, by their token ids; least recently used evicted first."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.tokens = 0

    def longest(self, ids: Sequence[int]) -> tuple[int, tuple[torch.Tensor, torch.Tensor] | None]:
        """(n, kv): the most positions of `ids` that one entry holds (a common prefix), and that entry."""
        best, best_kv, best_key = 0, None, None
        for key, kv in self.entries.items():
            n = common_prefix(key, ids)
            if n > best:
                best, best_kv, best_key = n, kv, key
        if best_key is not None:
            self.entries.move_to_end(best_key)
        return best, best_kv

    def put(self, ids: Sequence[int], kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Keep `kv` for `ids`; entries that are a prefix of ids are dropped (this one holds them)."""
        key = tuple(ids)
        if len(key) > self.max_tokens or not key:
            return
        self.drop_prefixes_of(key)
        self.entries[key] = kv
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self.entries)))

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0

    def drop_prefixes_of(self, ids: tuple[int, ...]) -> None:
        """Forget the entries that are a prefix of ids: what holds ids holds them."""
        for old in [o for o in self.entries if len(o) <= len(ids) and ids[:len(o)] == o]:
            self._drop(old)

    def _drop(self, key: tuple[int, ...]) -> None:
        del self.entries[key]
        self.tokens -= len(key)

