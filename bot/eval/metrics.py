"""The evals' metrics: pure functions of texts and ranks, with no model and no database.

- retrieval: whether a passage contains an answer span (`first_hit`), recall@k and MRR (`ranking_metrics`);
- answers: SQuAD's normalisation, token F1, "contains a gold answer", "right" (contains one and is short);
  a decoding loop (`loops`);
- summaries: ROUGE-1/2/Lsum from the `rouge-score` package (`rouge`), Porter stemming, Lsum on sentence lines.

The small ROUGE functions (`rouge_n`, `rouge_l`, ...) are a transparent re-implementation with the same
tokenisation; the tests check them against rouge-score.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from bot.documents.chunk import split_sentences
from bot.eval.datasets import by_half

KS = (1, 5, 20)
METRICS = ("rouge1", "rouge2", "rougeLsum")


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


# ------------------------------------------------------------------------------------------ retrieval


def normalize_span(text: str) -> str:
    """Case-folded, NFKC (ligatures), soft hyphens dropped, every run of whitespace one space."""
    text = unicodedata.normalize("NFKC", text).replace("\u00ad", "").lower()
    return " ".join(text.split())


def first_hit(texts: Sequence[str], answers: Iterable[str]) -> int | None:
    """1-based rank of the first text that contains one of the answers, None when none does."""
    spans = [s for s in (normalize_span(a) for a in answers) if s]
    for rank, text in enumerate(texts, 1):
        t = normalize_span(text)
        if any(s in t for s in spans):
            return rank
    return None


def ranking_metrics(ranks: Sequence[int | None], ks: Sequence[int] = KS) -> dict[str, float]:
    """recall@k (share of questions found within the top k) and MRR (1/rank, 0 when not found)."""
    n = len(ranks)
    if n == 0:
        return {**{f"recall@{k}": 0.0 for k in ks}, "mrr": 0.0, "n": 0}
    out: dict[str, float] = {f"recall@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["n"] = n
    return out


def split_figures(ranks: list[int | None], halves: list[int], ks: Sequence[int] = KS) -> dict[str, dict]:
    """ranking_metrics for the tuning half (0), the held-out half (1) and all questions."""
    return {half: ranking_metrics(rs, ks) for half, rs in by_half(ranks, halves).items()}


# ------------------------------------------------------------------------------------------ answers


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces; NFKC first, so that
    "…" is "..." and a ligature its letters."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between a prediction and one gold answer."""
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    return _f1(sum((Counter(p) & Counter(g)).values()), len(p), len(g))


def contains_answer(prediction: str, answers: Iterable[str]) -> bool:
    """The prediction contains one gold answer, compared after SQuAD normalisation."""
    p = f" {squad_normalize(prediction)} "
    return any(f" {squad_normalize(a)} " in p for a in answers if squad_normalize(a))


RIGHT_MAX_WORDS = 50  # an answer longer than this is not counted right even when it mentions the gold


def word_count(text: str) -> int:
    return len(text.split())


def right(prediction: str, answers: Iterable[str], max_words: int = RIGHT_MAX_WORDS) -> bool:
    """The prediction mentions a gold answer and is short: what a reader would call a right answer (a long text
    that happens to contain it, such as a whole passage pasted back, is not)."""
    return word_count(prediction) <= max_words and contains_answer(prediction, answers)


def loops(text: str, n: int = 8, times: int = 3) -> bool:
    """A line, or a run of n words, that occurs `times` times or more: the mark of a decoding loop."""
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    words = text.split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return any(c >= times for c in lines.values()) or any(c >= times for c in grams.values())


# ------------------------------------------------------------------------------------------ ROUGE


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_TOKENIZERS: dict[bool, object] = {}


def rouge_tokens(text: str, stem: bool = True) -> list[str]:
    """rouge-score's tokenisation: lower-cased runs of ASCII letters and digits; with `stem`, words of more
    than three letters Porter-stemmed by rouge-score's own tokenizer."""
    if not stem:
        return _ROUGE_TOKEN.findall(text.lower())
    if stem not in _TOKENIZERS:
        from rouge_score.tokenizers import DefaultTokenizer

        _TOKENIZERS[stem] = DefaultTokenizer(use_stemmer=True)
    return _TOKENIZERS[stem].tokenize(text)


def rouge_n(prediction: str, reference: str, n: int, stem: bool = True) -> float:
    """ROUGE-N F1: clipped n-gram overlap."""
    def grams(tokens: list[str]) -> Counter:
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    p, r = grams(rouge_tokens(prediction, stem)), grams(rouge_tokens(reference, stem))
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, stem: bool = True) -> float:
    """ROUGE-L F1 over the whole text (one LCS, no sentence split)."""
    p, r = rouge_tokens(prediction, stem), rouge_tokens(reference, stem)
    return _f1(lcs_length(p, r), len(p), len(r))


_SCORER = None


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/Lsum F1 from rouge-score with stemming; both texts are put one sentence a line first."""
    global _SCORER
    if _SCORER is None:
        from rouge_score.rouge_scorer import RougeScorer

        _SCORER = RougeScorer(list(METRICS), use_stemmer=True)
    lines = ["\n".join(split_sentences(t)) for t in (reference, prediction)]
    return {k: v.fmeasure for k, v in _SCORER.score(*lines).items()}
