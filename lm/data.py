"""Training data: token streams from plain text and SFT examples from conversations.

Text is tokenized once into a flat uint16/uint32 array (memmapped from a `.bin` file when a cache path is
given, as nanoGPT does) and split deterministically: the first 90% of tokens train, the last 10% validate.
Batches are random contiguous windows of block_size + 1 tokens.

Conversations become (ids, targets) pairs through the tokenizer's chat template: targets are the next token
where the template's assistant mask is 1 and -100 (ignored by the loss) elsewhere, so the model learns to
answer, not to write the user's turns.

Every batch is a pure function of (seed, rank, step, micro-step): a resumed run sees exactly the batches the
uninterrupted run would have seen, and DDP ranks read different batches without coordinating.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

IGNORE = -100


class DataError(ValueError):
    pass


class TextTokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...


class ChatTokenizer(Protocol):
    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = ...) -> tuple[list[int], list[int]]: ...


# ------------------------------------------------------------------------------------------- token streams

def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65536 else np.uint32


def _chunks(text: str, size: int) -> Iterable[str]:
    """Pieces of about `size` characters, cut after a newline so no word is split across two encode calls."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        yield text[start:end]
        start = end


def tokenize_text(text: str, tokenizer: TextTokenizer, cache_path: Path | None = None,
                  chunk_chars: int = 1 << 20) -> np.ndarray:
    """All of `text` as one token array. With `cache_path`, the array is written there (atomically) and
    returned as a read-only memmap, so a corpus larger than memory is only ever paged in."""
    if not text:
        raise DataError("the training text is empty")
    dtype = token_dtype(tokenizer.vocab_size)
    parts = [np.asarray(tokenizer.encode(piece), dtype=dtype) for piece in _chunks(text, chunk_chars)]
    ids = np.concatenate(parts)
    if cache_path is None:
        return ids
    cache_path = Path(cache_path)
    tmp = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}")
    ids.tofile(tmp)
    os.replace(tmp, cache_path)
    return np.memmap(cache_path, dtype=dtype, mode="r")


def split_tokens(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """First (1 - val_fraction) of the stream trains, the rest validates (deterministic, no shuffling, so the
    validation text never leaks into training windows)."""
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


def _rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    return np.random.default_rng([seed, rank, step, micro])


class TextBatches:
    """Random windows (x, y) of a token stream, y = x shifted by one: (B, T) int64 each."""

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int = 0, rank: int = 0):
        if len(data) < block_size + 2:
            raise DataError(f"{len(data)} tokens are too few for windows of {block_size} + 1 tokens")
        self.data, self.block_size, self.batch_size, self.seed, self.rank = data, block_size, batch_size, seed, rank

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        starts = _rng(self.seed, self.rank, step, micro).integers(0, len(self.data) - self.block_size - 1,
                                                                  self.batch_size)
        win = np.stack([np.asarray(self.data[s:s + self.block_size + 1], dtype=np.int64) for s in starts])
        w = torch.from_numpy(win)  # (B, T+1)
        return w[:, :-1], w[:, 1:]

    @property
    def n_tokens(self) -> int:
        return len(self.data)


# ------------------------------------------------------------------------------------------- conversations

def read_chat_jsonl(path: Path) -> list[list[dict]]:
    """One conversation per line: {"messages": [{"role", "content"}, ...]} or the bare list of messages."""
    out: list[list[dict]] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON: {e.msg}") from e
        messages = obj.get("messages") if isinstance(obj, dict) else obj
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise DataError(f'{path}:{n}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        out.append(messages)
    if not out:
        raise DataError(f"{path}: no conversations")
    return out


def chat_examples(conversations: Iterable[Sequence[dict]], tokenizer: ChatTokenizer,
                  max_len: int) -> list[tuple[list[int], list[int]]]:
    """(ids, targets) per conversation, both of length <= max_len: targets[t] is ids' next token when that
    token is assistant text (mask 1) and -100 otherwise. Conversations are cut to max_len + 1 tokens; one
    left with no assistant token to learn from is dropped."""
    out = []
    for messages in conversations:
        ids, mask = tokenizer.render_chat(messages, add_generation_prompt=False)
        ids, mask = ids[:max_len + 1], mask[:max_len + 1]
        targets = [tok if m else IGNORE for tok, m in zip(ids[1:], mask[1:], strict=True)]
        if any(t != IGNORE for t in targets):
            out.append((ids[:-1], targets))
    return out


def pad_batch(examples: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example: x with pad_id, y with -100 (padding never counts in the loss)."""
    T = max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (ids, tg) in enumerate(examples):
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        y[i, :len(tg)] = torch.tensor(tg, dtype=torch.long)
    return x, y


def split_examples(examples: list, val_fraction: float = 0.1) -> tuple[list, list]:
    """The last val_fraction of the examples (at least one when there are two or more) validate."""
    n_val = max(1, int(round(len(examples) * val_fraction))) if len(examples) > 1 else 0
    return examples[:len(examples) - n_val], examples[len(examples) - n_val:]


class ChatBatches:
    """Padded batches of randomly drawn SFT examples."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, seed: int = 0,
                 rank: int = 0, pad_id: int = 0):
        if not examples:
            raise DataError("no chat examples with assistant tokens to train on")
        self.examples, self.batch_size, self.seed, self.rank, self.pad_id = examples, batch_size, seed, rank, pad_id

    def get(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        pick = _rng(self.seed, self.rank, step, micro).integers(0, len(self.examples), self.batch_size)
        return pad_batch([self.examples[i] for i in pick], self.pad_id)

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.examples)
