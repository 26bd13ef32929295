"""`docent eval chat`: chat quality through the bot's own chat path, scored without a person.

The set (tests/data/chat_quality.json) holds conversations of user turns: general-knowledge facts, simple
arithmetic and units, multi-turn coherence (a fact said early, asked for later) and questions nobody could
answer (the right reply says so rather than inventing). Each conversation is replied to turn by turn as the
bot does it (`bot.services.lm_gateway.ChatModel`: the system prompt, the history within the context budget, the
configured sampling), with the model's own earlier replies in the history; the last reply is scored:

- right: it mentions a gold answer (as whole words, `mentions_gold`) in at most `max_words` words; for a refuse item it
  says it cannot know (one of the set's refusal markers);
- mentions: the gold anywhere, however long the reply (a long reply that holds the answer is not right);
- words per reply, loops, and replies cut by the token cap.

Replies are capped at `max_new_tokens` so an eval stays short; conversations run side by side, as chats do in
the bot (its server batches their decoding).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bot.config import Settings
from bot.eval.datasets import by_half
from bot.eval.metrics import loops, mean, word_count

DEFAULT_SET = Path(__file__).resolve().parents[2] / "tests" / "data" / "chat_quality.json"
KINDS = ("fact", "arithmetic", "units", "multi_turn", "refuse")
REFUSE = "refuse"


@dataclass(frozen=True)
class ChatItem:
    iid: str
    kind: str
    turns: list[str]  # the user's messages, in order; the reply to the last one is scored
    answers: list[str]  # gold answers; for a refuse item, the set's refusal markers
    max_words: int
    split: str


def load_chat_set(path: str | Path = DEFAULT_SET) -> tuple[list[ChatItem], dict]:
    """The items and the set's settings ({"max_words", "max_new_tokens"}); a ValueError naming a bad item."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        rows, markers = raw["items"], [str(m) for m in raw.get("refusal_markers", [])]
        max_words, max_new_tokens = int(raw.get("max_words", 60)), int(raw.get("max_new_tokens", 96))
    except FileNotFoundError:
        raise FileNotFoundError(f"chat set not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected {{\"items\": [...], \"refusal_markers\": [...]}}: {e}") from None
    items = [_item(row, markers, max_words, f"{path}: items[{i}]") for i, row in enumerate(rows)]
    if not items:
        raise ValueError(f"{path}: no items")
    if len({it.iid for it in items}) != len(items):
        raise ValueError(f"{path}: item ids repeat")
    return items, {"max_words": max_words, "max_new_tokens": max_new_tokens}


def _item(row: dict, markers: list[str], max_words: int, where: str) -> ChatItem:
    try:
        iid, kind, turns = str(row["id"]), str(row["kind"]), [str(t) for t in row["turns"]]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: an item needs id, kind and turns: {e!r}") from None
    if kind not in KINDS:
        raise ValueError(f"{where} ({iid}): kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not turns or not all(t.strip() for t in turns):
        raise ValueError(f"{where} ({iid}): turns must be non-empty user messages")
    answers = markers if kind == REFUSE else [str(a) for a in row.get("answers", [])]
    if not answers:
        raise ValueError(f"{where} ({iid}): " + ("the set has no refusal_markers" if kind == REFUSE
                                                 else "an item needs at least one gold answer"))
    split = row.get("split", "tune")
    if split not in ("tune", "held-out"):
        raise ValueError(f"{where} ({iid}): split must be tune or held-out, not {split!r}")
    return ChatItem(iid, kind, turns, answers, int(row.get("max_words", max_words)), split)


def _words(text: str) -> str:
    """Lower case, every run of what is not a letter or digit one blank, no articles: "100°C" has the word
    "100", and "9:30" matches "9:30 am" (SQuAD's normalisation would glue "100°c" and "930")."""
    return " ".join(w for w in re.sub(r"[\W_]+", " ", text.lower()).split() if w not in ("a", "an", "the"))


def mentions_gold(reply: str, answers: list[str]) -> bool:
    """The reply mentions one of the gold answers as whole words."""
    text = f" {_words(reply)} "
    return any(f" {_words(a)} " in text for a in answers if _words(a))


def _says_it_cannot_know(reply: str, markers: list[str]) -> bool:
    text = reply.lower().replace("\u2019", "'")
    return any(m.lower() in text for m in markers)


def score_reply(item: ChatItem, reply: str) -> dict:
    """The figures of one item's last reply: right, mentions, words, loops."""
    mentions = (_says_it_cannot_know(reply, item.answers) if item.kind == REFUSE
                else mentions_gold(reply, item.answers))
    words = word_count(reply)
    return {"right": mentions and words <= item.max_words, "mentions": mentions, "words": words,
            "loops": loops(reply)}


def converse(model, settings: Settings, turns: list[str], config) -> tuple[list[str], int, bool]:
    """The model's replies to `turns`, each with the conversation so far in its prompt, as the bot builds it
    (system prompt + stored turns, trimmed to the context by ChatModel.prompt), through the model's server;
    with the tokens generated and whether the last reply was cut by the token cap."""
    history: list[dict] = []
    replies, tokens, capped = [], 0, False
    for turn in turns:
        history.append({"role": "user", "content": turn})
        messages = [{"role": "system", "content": settings.model.system_prompt}, *history]
        ticket = model.server.submit(model.prompt(messages, config), config, None)
        reply = "".join(ticket).strip()
        tokens += ticket.result.new_tokens
        capped = ticket.result.finish_reason == "length"
        replies.append(reply)
        history.append({"role": "assistant", "content": reply})
    return replies, tokens, capped


def figures(rows: list[dict]) -> dict:
    return {"n": len(rows), "right": mean(r["right"] for r in rows), "mentions": mean(r["mentions"] for r in rows),
            "words": mean(r["words"] for r in rows), "capped": mean(r["capped"] for r in rows),
            "loops": sum(r["loops"] for r in rows)}


def chat_eval(settings: Settings, dataset: str | Path | None = None, *, limit: int | None = None, seed: int = 0,
              max_new_tokens: int | None = None, show_progress: bool = True) -> dict:
    """Every item (or a seeded sample of `limit`) through the chat model, scored; figures per half and kind."""
    from tqdm import tqdm

    from bot.eval.datasets import sample
    from bot.services.lm_gateway import ChatModel, generation_config

    items, options = load_chat_set(dataset or DEFAULT_SET)
    items = sample(items, limit, seed)
    cap = max_new_tokens or options["max_new_tokens"]
    t0 = time.perf_counter()
    model = ChatModel.load(settings)
    load_seconds = time.perf_counter() - t0
    bar = tqdm(total=len(items), desc="chatting", unit="conversation", disable=not show_progress)
    lock = threading.Lock()

    def run(i: int, item: ChatItem) -> dict:
        config = generation_config(settings.model, max_new_tokens=cap, seed=seed * 1000 + i)
        started = time.perf_counter()
        replies, tokens, capped = converse(model, settings, item.turns, config)
        row = {"id": item.iid, "kind": item.kind, "half": 0 if item.split == "tune" else 1, "turns": item.turns,
               "gold": item.answers[:3] if item.kind != REFUSE else [], "replies": replies,
               "capped": capped, "tokens": tokens,
               "seconds": time.perf_counter() - started} | score_reply(item, replies[-1])
        with lock:
            bar.update(1)
        return row

    started = time.perf_counter()
    try:  # side by side, as the bot's chats are: the model's server batches them
        with ThreadPoolExecutor(max_workers=max(1, settings.model.batch_size)) as pool:
            rows = list(pool.map(run, range(len(items)), items))
    finally:
        bar.close()
        model.close()
    seconds = time.perf_counter() - started
    return {
        "eval": "chat", "dataset": Path(dataset or DEFAULT_SET).name, "model": settings.model.name, "seed": seed,
        "max_new_tokens": cap, "temperature": settings.model.temperature, "load_seconds": load_seconds,
        "seconds": seconds, "tokens_per_second": sum(r["tokens"] for r in rows) / max(seconds, 1e-9),
        "halves": {half: figures(rs) for half, rs in by_half(rows, [r["half"] for r in rows]).items()},
        "kinds": {k: figures([r for r in rows if r["kind"] == k]) for k in KINDS if any(r["kind"] == k for r in rows)},
        "examples": rows,
    }
