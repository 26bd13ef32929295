"""Answering a question from documents: retrieve, number the passages in the prompt, stream, cite.

A small model follows "[n]" citation instructions unreliably, so the sources shown are the passages the
answer cites when it does, else the passages whose words the answer actually reuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.services.knowledge import Passage

NOT_FOUND = "I could not find this in your documents."
MIN_DENSE = 0.3  # cosine above which a passage counts as about the question even without shared words
ANSWER_SYSTEM = (
    "You answer questions using only the numbered passages from the user's documents. "
    "Answer in one to three sentences. If the passages do not contain the answer, say you could not find it."
)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
_STOP = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
which with what who how why when where does do did not no can could may might will would should""".split())


@dataclass
class Grounded:
    """The prompt for one answer and the passages it was built from."""

    messages: list[dict]
    passages: list[Passage] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.passages)


def retrieval_query(question: str, recent_user_turns: list[str]) -> str:
    """A follow-up ("and the second one?") carries little to search with: add the previous question."""
    words = [w for w in _WORD.findall(question.lower()) if w not in _STOP]
    if recent_user_turns and len(words) < 6:
        return f"{question} {recent_user_turns[-1]}"
    return question


def relevant(passages: list[Passage], question: str, min_dense: float = MIN_DENSE) -> list[Passage]:
    """Keep passages that are about the question: similar in meaning, or sharing its rarer words."""
    terms = {w for w in _WORD.findall(question.lower()) if w not in _STOP and len(w) > 2}
    out = []
    for p in passages:
        overlap = terms & set(_WORD.findall(p.text.lower()))
        if p.dense >= min_dense or (terms and len(overlap) >= max(1, len(terms) // 2)):
            out.append(p)
    return out


def prompt_budget(context_tokens: int, reply_tokens: int) -> int:
    """Tokens the numbered passages, the recent turns and the question may fill: the context less the reply's
    room (at most a quarter of the context) and a small margin for the template's own tokens."""
    return context_tokens - min(reply_tokens, context_tokens // 4) - 64


def build_prompt(question: str, passages: list[Passage], history: list[dict], token_budget: int,
                 count_tokens) -> Grounded:
    """Number the best passages that fit the budget, then the recent turns, then the question."""
    used, blocks, spent = [], [], count_tokens(ANSWER_SYSTEM) + count_tokens(question) + 32
    for p in passages:
        block = f"[{len(used) + 1}] ({p.cite()}) {p.text}"
        cost = count_tokens(block)
        if spent + cost > token_budget:
            break
        used.append(p)
        blocks.append(block)
        spent += cost
    context = "\n\n".join(blocks)
    messages = [{"role": "system", "content": ANSWER_SYSTEM}, *history[-4:],
                {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}"}]
    return Grounded(messages, used)


def cited_passages(answer: str, passages: list[Passage]) -> list[Passage]:
    """The passages the answer used: its [n] markers, else those sharing a real run of its words."""
    marks = {int(m) for m in re.findall(r"\[(\d{1,2})\]", answer)}
    by_mark = [p for i, p in enumerate(passages, 1) if i in marks]
    if by_mark:
        return by_mark
    answer_words = [w for w in _WORD.findall(answer.lower())]
    grams = {tuple(answer_words[i:i + 3]) for i in range(len(answer_words) - 2)}
    scored = []
    for p in passages:
        words = _WORD.findall(p.text.lower())
        shared = grams & {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
        if shared:
            scored.append((len(shared), p))
    scored.sort(key=lambda t: -t[0])
    return [p for _, p in scored[:3]] or passages[:1]


def sources_note(answer: str, passages: list[Passage]) -> str:
    """What goes under an answer: the sources it used, then the sentences of the best of them closest to the
    question, quoted, so that the reader can check a small model's answer against the document's own words."""
    used = cited_passages(answer, passages)
    return "\n".join(part for part in (format_sources(used), format_quote(used)) if part)


def format_quote(passages: list[Passage], limit: int = 400) -> str:
    """The best-ranked passage's sentence window closest to the question, quoted with its source."""
    best = max((p for p in passages if p.evidence), key=lambda p: p.score, default=None)
    if best is None:
        return ""
    quote = best.evidence if len(best.evidence) <= limit else best.evidence[: limit - 1].rsplit(" ", 1)[0] + "…"
    return f"Closest passage ({best.cite()}): “{quote}”"


def format_sources(passages: list[Passage]) -> str:
    seen, lines = set(), []
    for p in passages:
        if p.cite() not in seen:
            seen.add(p.cite())
            lines.append(f"• {p.cite()}")
    return "Sources:\n" + "\n".join(lines) if lines else ""
