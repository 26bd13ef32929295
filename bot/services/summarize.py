"""Summaries that cover a whole document (or conversation), not its top-k chunks: map, then reduce.

Map: the text is cut into windows that fit the model's context; each window is summarized. Reduce: the
partial summaries are summarized together, in rounds if they still do not fit. Blocking code: callers
run it in a worker thread and pass `progress` for a status line or a tqdm bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bot.services.models import ChatModel, Sampling

MAP_PROMPT = "Summarize the following part of a document in a few sentences. Keep names, numbers and findings."
REDUCE_PROMPT = "Combine these partial summaries of one document into a single concise summary."
CONVERSATION_PROMPT = "Summarize this conversation in a few sentences: what was asked and what was answered."


def windows(pieces: list[str], budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """Greedily pack consecutive pieces into windows of at most `budget` tokens (long pieces are cut)."""
    sep = count_tokens("\n\n") + 1  # the joint between two pieces costs tokens too
    out, current, size = [], [], 0
    for piece in pieces:
        n = count_tokens(piece) + sep
        while n > budget:  # one piece alone is too long: cut it by words
            words = piece.split()
            head = " ".join(words[: max(1, len(words) * budget // n)])
            out.append(head)
            piece = piece[len(head):].strip()
            n = count_tokens(piece) + sep
        if current and size + n > budget:
            out.append("\n\n".join(current))
            current, size = [], 0
        if piece:
            current.append(piece)
            size += n
    if current:
        out.append("\n\n".join(current))
    return out


def _ask(model: ChatModel, instruction: str, text: str, sampling: Sampling, cancel: threading.Event | None) -> str:
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": text}]
    return "".join(model.stream_chat(messages, sampling, cancel)).strip()


def summarize(model: ChatModel, pieces: list[str], *, instruction: str = MAP_PROMPT,
              progress: Callable[[int, int], None] | None = None, max_new_tokens: int = 160,
              cancel: threading.Event | None = None) -> str:
    """A summary of all of `pieces` (sections or turns), in reading order."""
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.15)
    budget = max(128, model.context_tokens - max_new_tokens - 96)
    parts = windows([p for p in pieces if p.strip()], budget, model.count_tokens)
    if not parts:
        return ""
    total = len(parts) + max(0, len(parts) > 1)
    summaries = []
    for i, part in enumerate(parts):
        summaries.append(_ask(model, instruction, part, sampling, cancel))
        if progress:
            progress(i + 1, total)
    while len(summaries) > 1:
        groups = windows(summaries, budget, model.count_tokens)
        summaries = [_ask(model, REDUCE_PROMPT, g, sampling, cancel) for g in groups]
        if len(groups) == 1:
            break
    if progress:
        progress(total, total)
    return summaries[0]


def conversation_text(turns: list[dict]) -> list[str]:
    return [f"{'User' if t['role'] == 'user' else 'Assistant'}: {t['content']}" for t in turns if t["role"] != "system"]
