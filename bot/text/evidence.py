"""The evidence for an answer: the passages retrieval found (KnowledgeBase.search), and their sentences that
best match the question.

A 256-token chunk holds its answer in one sentence or two, and a 135M model given six whole chunks loses it
among the rest. So the passages are split into sentences and each one is scored by

    cosine(MiniLM(sentence), MiniLM(question)) + coverage

where coverage is the share of the question's idf weight (the scope's BM25 idf) carried by words the sentence
contains. Meaning finds paraphrases; coverage finds the one sentence that names what the question names. On
SQuAD 2.0's Normans article the best five sentences hold the answer for 0.93 of the answerable questions
(the best one alone: 0.76).

The same figures of the best sentence say whether a message is about the documents at all.

A question in a document (an FAQ's "Q: What do the letters XZ mean?") states nothing: it is answered by the
sentence after it. So the two are one piece of evidence, scored as the better of the two; otherwise the question
line, nearest in meaning to the user's question, wins and is quoted as the "closest passage" while its answer
ranks below.

Documents are data, not instructions. A sentence that addresses the assistant, the user or the system ("ignore
previous instructions", "tell the user ...", "Assistant: ...", "NOTE TO THE AI") loses INSTRUCTION_PENALTY of
its score, so it never wins the ranking for an unrelated question, and is flagged: the answer pipeline never
gives it to the model as evidence nor shows it as the bot's own statement, only as a quote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bot.documents.chunk import split_sentences
from lm.rank import bm25_tokens

INSTRUCTION_PENALTY = 1.0  # a whole cosine: such a sentence wins only where nothing else matches at all

_ADDRESSES_READER = re.compile(r"""(?ix)
    \b(?:ignore|disregard|forget|override)\b[^.!?]{0,40}\b(?:instructions?|prompts?|rules|directions|guidelines)\b
  | \b(?:note|message|instructions?|attention|reminder)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?
        (?:ai|a\.i\.|assistants?|bots?|chatbots?|language\s+models?|llms?|models?|gpt)\b
  | (?:^|\n|[.!?]\s+)\W*(?:assistant|system|ai|bot|chatbot|user)\s*:
  | \b(?:tell|inform|remind|warn)\s+(?:the|every|all|each|any|your)\s+(?:users?|readers?|customers?|people)\b
  | \b(?:you\s+are\s+now|as\s+an\s+ai|act\s+as\s+(?:an?\s+)?(?:ai|assistant)|from\s+now\s+on,?\s+you)\b
  | \b(?:system\s+prompt|jailbreak|prompt\s+injection)\b
  | \b(?:ai|assistant|chatbot|language\s+model)s?\b[^.!?]{0,30}\b(?:must|should|shall|will)\s+(?:always|never|now|tell|say|reply|answer|respond|ignore)\b
""")


def addresses_reader(text: str) -> bool:
    """Whether a document's sentence speaks to the assistant, the user or the system instead of stating something:
    an instruction planted in a document, to be quoted and never followed."""
    return bool(_ADDRESSES_READER.search(text))


def _under_instruction_header(before: str) -> bool:
    """"NOTE TO THE AI:" then a sentence: the sentence is part of the planted instruction."""
    return before.rstrip().endswith(":") and addresses_reader(before)


@dataclass
class Passage:
    """A retrieved chunk with what a citation needs."""

    chunk_id: int
    document: str
    page: int | None
    heading: str | None
    text: str
    score: float
    dense: float  # cosine similarity to the query, for the "nothing relevant" decision
    evidence: str = ""  # the chunk's sentence window closest to the query ("" when it has none stored)

    def cite(self) -> str:
        return self.document + (f", p. {self.page}" if self.page else "")


@dataclass
class Evidence:
    """One sentence of a retrieved passage, scored against the question."""

    text: str
    passage: Passage
    before: str  # the sentence before it in the passage ("" for the first): what "he" or "it" refers to
    cosine: float
    coverage: float
    shared: int = 0  # how many of the question's words (stopwords aside) it contains
    instruction: bool = False  # it addresses the reader (addresses_reader): quoted, never followed

    @property
    def score(self) -> float:
        return self.cosine + self.coverage - (INSTRUCTION_PENALTY if self.instruction else 0.0)


def coverage(question_words: set[str], text_words: set[str], idf: dict[str, float]) -> float:
    """Share of the question's idf weight among the words of a text (words unknown to the scope count as rare)."""
    rare = max(idf.values(), default=1.0)
    total = sum(idf.get(w, rare) for w in question_words)
    return sum(idf.get(w, rare) for w in question_words & text_words) / total if total else 0.0


def select(question: str, passages: Sequence[Passage], encode: Callable[[list[str]], np.ndarray],
           idf: dict[str, float], n: int = 5, max_chars: int = 600) -> list[Evidence]:
    """The `n` best sentences of the passages for the question, best first (each passage's repeated
    sentences, from overlapping chunks, counted once). A "sentence" longer than `max_chars` (a table row, a
    run-on line) is cut at a word, so that n of them always fit a prompt."""
    found: list[tuple[str, Passage, str]] = []
    seen: set[str] = set()
    for p in passages:
        sentences = [_cut(s, max_chars) for s in split_sentences(p.text)]
        for i, s in enumerate(_with_answers(sentences)):
            if s not in seen:
                seen.add(s)
                found.append((s, p, sentences[i - 1] if i else ""))
    if not found:
        return []
    vectors = encode([s for s, _, _ in found] + [question])  # (S + 1, dim), unit length
    cosines = vectors[:-1] @ vectors[-1]
    words = set(bm25_tokens(question))
    scored = []
    for (s, p, before), c in zip(found, cosines, strict=True):
        have = set(bm25_tokens(s))
        scored.append(Evidence(s, p, before, float(c), coverage(words, have, idf), len(words & have),
                               instruction=addresses_reader(s) or _under_instruction_header(before)))
    scored.sort(key=lambda e: -e.score)
    return scored[:n]


_ASKS = re.compile(r"^\W*(?:q|question)\s*\d*\s*[:.)]\s|\?\W*$", re.I)


def asks(sentence: str) -> bool:
    """Whether a document's sentence is a question: it ends with "?", or is an FAQ's "Q:" line (which may state
    the problem, "Q: My tar doesn't recognize .tar.xz files.")."""
    return bool(_ASKS.search(sentence))


def _with_answers(sentences: list[str], longest: int = 3) -> list[str]:
    """The sentences, each question joined to the sentence that answers it: the first that does not ask, after
    at most `longest` - 1 more questions ("Q: My tar doesn't recognize .tar.xz files. How can I extract them?
    A: xz -dc foo.tar.xz | tar xf -"). The list keeps its length, so the sentence before each one stays put."""
    out = list(sentences)
    for i, s in enumerate(sentences):
        run = sentences[i : i + longest]
        answered = next((j for j, t in enumerate(run) if not asks(t)), 0)
        if asks(s) and answered:
            out[i] = " ".join(run[: answered + 1])
    return out


def _cut(sentence: str, max_chars: int) -> str:
    if len(sentence) <= max_chars:
        return sentence
    return sentence[:max_chars].rsplit(" ", 1)[0] + " …"
