"""The training data of a run, read from SQL: examples in the chat format `lm.train` reads, and the held-out
choice.

Conversations of the chats that opted in (chat_settings.allow_training, default
`training.use_chats_by_default`) become chat examples: consecutive user/assistant exchanges under the chat's
system prompt, packed up to the block size. A reply whose net feedback is negative (👎) is left out together
with its question, and the conversation is cut there so no later example carries it in its context. Examples
holding a 👍 reply come first, so the example cap keeps them. The chats' documents become chat examples too
("What does DOC (page P) say about HEADING?" -> the chunk's text): `lm.train` reads one format per run, and
with the loss only on the answer this is continued pre-training on the documents' text, tied to a prompt
that names them. The held-out examples (the last ones in the file, where `lm.train` takes them from, and
exactly as many as it takes) are those with the lowest hash of their conversation or chunk id: not the
newest or the liked ones, and mostly the same from run to run as the data grows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import training as training_db
from lm import hub
from lm.tokenizer import Tokenizer

DOCUMENT_QUESTION = "What does {doc}{page} say{about}?"


@dataclass
class Example:
    messages: list[dict]
    source: str  # "conversation" | "document"
    key: str  # what the held-out choice hashes: "c<conversation id>" or "d<chunk id>"
    liked: bool
    tokens: int
    order: int = 0  # position within its key (segments of one conversation)


@dataclass
class DataStats:
    chats: int = 0
    conversations: int = 0
    exchanges: int = 0
    liked: int = 0  # 👍 replies kept
    disliked: int = 0  # 👎 replies left out
    documents: int = 0
    chunks: int = 0
    dropped: int = 0  # examples with no answer token inside the block size, or over the cap


@dataclass
class Sources:
    """What the opted-in chats hold, as read from SQL: the raw material of the examples."""

    chats: list[int]
    prompts: dict[int, str]  # the chats' own system prompts
    turns: list[training_db.Turn]
    chunks: list[training_db.ChunkRow]


async def read_sources(session: AsyncSession, use_chats_by_default: bool) -> Sources:
    chats = await training_db.training_chats(session, use_chats_by_default)
    return Sources(chats, await training_db.system_prompts(session, chats),
                   await training_db.conversation_turns(session, chats),
                   await training_db.training_chunks(session, chats))


def base_info(name: str, cache_dir: Path) -> tuple[Any, int | None]:
    """A base model's tokenizer and context length, without loading its weights."""
    from lm.load import is_model_dir  # lazy: loads torch, seconds at start-up

    if is_model_dir(name):
        path = Path(name).expanduser()
        cfg = path / "config.json"
        ctx = json.loads(cfg.read_text()).get("max_seq_len") if cfg.is_file() else None
        return Tokenizer.from_file(path), ctx
    from lm.gguf import read_metadata  # lazy: loads torch, seconds at start-up

    meta = read_metadata(hub.resolve(name, cache_dir))
    ctx = meta.get(f"{meta.get('general.architecture')}.context_length")
    return Tokenizer.from_gguf(meta), int(ctx) if ctx else None


def _render_len(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.render_chat(messages, add_generation_prompt=False)[0])


def _fits(tokenizer, messages: list[dict], block_size: int) -> int:
    """Tokens of the example as lm.train will see it, or 0 when it would drop it (no answer token left)."""
    from lm.data import chat_examples  # lazy: loads torch, seconds at start-up

    out = chat_examples([messages], tokenizer, block_size)
    return len(out[0][0]) if out else 0


def conversation_examples(turns: list[training_db.Turn], prompts: dict[int, str], default_prompt: str, tokenizer,
                          block_size: int, stats: DataStats) -> list[Example]:
    """Clean user -> assistant exchanges, cut at 👎 replies and at gaps, packed into examples of at most
    block_size + 1 tokens under the chat's system prompt."""
    out: list[Example] = []

    def emit(conv_id: int, chat_id: int, pairs: list[tuple[training_db.Turn, training_db.Turn]]) -> None:
        system = {"role": "system", "content": prompts.get(chat_id, default_prompt)}
        current: list[dict] = []
        liked = False
        for user, reply in pairs:
            exchange = [{"role": "user", "content": user.text}, {"role": "assistant", "content": reply.text}]
            if current and _render_len(tokenizer, [system, *current, *exchange]) > block_size + 1:
                close(conv_id, [system, *current], liked)
                current, liked = [], False
            current += exchange
            liked |= reply.score > 0
        if current:
            close(conv_id, [system, *current], liked)

    def close(conv_id: int, messages: list[dict], liked: bool) -> None:
        tokens = _fits(tokenizer, messages, block_size)
        if not tokens:
            stats.dropped += 1
            return
        order = sum(e.key == f"c{conv_id}" for e in out)
        out.append(Example(messages, "conversation", f"c{conv_id}", liked, tokens, order))

    conversations: set[int] = set()
    for conv_id, group in groupby(turns, key=lambda t: t.conversation_id):
        msgs = list(group)
        pairs: list[tuple[training_db.Turn, training_db.Turn]] = []
        i = 0
        while i < len(msgs):
            user, reply = msgs[i], msgs[i + 1] if i + 1 < len(msgs) else None
            clean = (user.role == "user" and user.status == "complete" and user.text.strip() and reply is not None
                     and reply.role == "assistant" and reply.status == "complete" and reply.text.strip())
            if not clean:
                # an unanswered question or a failed/cut-off reply: what follows lost part of its context
                emit(conv_id, user.chat_id, pairs)
                pairs, i = [], i + 1
                continue
            if reply.score < 0:
                stats.disliked += 1
                emit(conv_id, user.chat_id, pairs)
                pairs = []
            else:
                pairs.append((user, reply))
                stats.exchanges += 1
                stats.liked += reply.score > 0
                conversations.add(conv_id)
            i += 2
        emit(conv_id, msgs[0].chat_id, pairs)
    stats.conversations = len(conversations)
    return out


def document_examples(chunks: list[training_db.ChunkRow], prompts: dict[int, str], default_prompt: str, tokenizer,
                      block_size: int, stats: DataStats) -> list[Example]:
    out = []
    for c in chunks:
        question = DOCUMENT_QUESTION.format(doc=c.document, page=f" (page {c.page})" if c.page else "",
                                            about=f" about {c.heading}" if c.heading else "")
        messages = [{"role": "system", "content": prompts.get(c.chat_id, default_prompt)},
                    {"role": "user", "content": question}, {"role": "assistant", "content": c.text}]
        tokens = _fits(tokenizer, messages, block_size)
        if tokens:
            out.append(Example(messages, "document", f"d{c.chunk_id}", False, tokens))
        else:
            stats.dropped += 1
    stats.documents = len({c.document_id for c in chunks})
    stats.chunks = len(chunks)
    return out


def _stable_rank(e: Example) -> tuple[str, int]:
    return hashlib.sha256(e.key.encode()).hexdigest(), e.order


def arrange(conversations: list[Example], documents: list[Example], max_examples: int,
            stats: DataStats) -> tuple[list[Example], list[Example]]:
    """(train, held-out): 👍 first, then the newest conversations, then documents, capped; the held-out
    count is exactly what lm.data.split_examples takes from the end of the file."""
    from lm.data import split_examples  # lazy: loads torch, seconds at start-up

    newest = sorted(conversations, key=lambda e: (-int(e.key[1:]), e.order))
    ranked = [e for e in newest if e.liked] + [e for e in newest if not e.liked] + documents
    stats.dropped += max(0, len(ranked) - max_examples)
    ranked = ranked[:max_examples]
    n_val = len(split_examples(list(range(len(ranked))))[1])
    held = set(map(id, sorted(ranked, key=_stable_rank)[:n_val]))
    return [e for e in ranked if id(e) not in held], [e for e in ranked if id(e) in held]


def write_jsonl(path: Path, examples: list[Example]) -> Path:
    """The data file lm.train reads ({"messages": [...]} per line), written atomically."""
    from lm.checkpoint import atomic_write_text  # lazy: loads torch, seconds at start-up

    return atomic_write_text(path, "".join(json.dumps({"messages": e.messages}, ensure_ascii=False) + "\n"
                                           for e in examples))


def build_examples(sources: Sources, default_prompt: str, tokenizer, block_size: int,
                   max_examples: int) -> tuple[list[Example], list[Example], DataStats]:
    """(train, held-out, what was kept and left out): the examples of `sources` in the order of the file."""
    stats = DataStats(chats=len(sources.chats))
    convs = conversation_examples(sources.turns, sources.prompts, default_prompt, tokenizer, block_size, stats)
    docs = document_examples(sources.chunks, sources.prompts, default_prompt, tokenizer, block_size, stats)
    train, heldout = arrange(convs, docs, max_examples, stats)
    return train, heldout, stats
