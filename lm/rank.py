"""Retrieval ranking, all of it: the words BM25 counts, score fusion, and the product's hybrid ranking.

- `bm25_tokens`: the words a text is indexed and ranked by (lm.index's BM25, the idf and proximity below).
- `rrf_fuse`, `score_fuse`: plain fusion of the dense and BM25 rankings, which lm.index's search offers as its
  "rrf" and "score" modes; `rank` runs the baselines `docent eval retrieval` compares the product with.
- "hybrid" is the product's ranking and nothing else: BM25 and dense candidates (`hybrid_candidates`) scored
  by BM25, the cosine of each chunk's best sentence window (`window_cosines`), and where the question's words
  meet in it (`proximity`, weighted by `word_idf`): `hybrid_scores`.

Pure functions over numbers and words; what a scope's index or SQL holds is handed in by the caller
(bot.services.knowledge).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from bm25s.stopwords import STOPWORDS_EN

BASELINES = ("rrf", "dense", "bm25")  # what `rank` runs; "hybrid" (the product's) is `hybrid_scores`

# ---------------------------------------------------------------------------------------------- words

_STOPWORDS = frozenset(STOPWORDS_EN)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def light_stem(word: str) -> str:
    """A light English suffix stripper (plural -s/-es/-ies, -ing, -ed, -ly); keeps stems of >= 3 letters.

    bm25s' stemming needs PyStemmer (a C extension); this covers the common inflections without it.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        word = word[:-3] + "y"
    elif word.endswith("es") and not word.endswith(("aes", "ees", "oes")) and len(word) > 4:
        word = word[:-1]
    elif word.endswith("s") and not word.endswith(("us", "ss", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    return word


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased words, English stopwords removed, lightly stemmed."""
    return [light_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS]


def word_idf(texts: list[str]) -> dict[str, float]:
    """BM25's idf, log(1 + (N - n + 0.5) / (n + 0.5)), over the `bm25_tokens` of `texts`."""
    df: Counter[str] = Counter()
    for text in texts:
        df.update(set(bm25_tokens(text)))
    n = len(texts)
    return {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}


# --------------------------------------------------------------------------------------------- fusion


def rrf_fuse(ranked: Sequence[Sequence[int]], weights: Sequence[float], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(id) = sum_r weight_r / (k + rank_r(id)), rank from 1."""
    scores: dict[int, float] = {}
    for ids, w in zip(ranked, weights, strict=True):
        for rank, cid in enumerate(ids, start=1):
            scores[cid] = scores.get(cid, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda t: (-t[1], t[0]))


def score_fuse(results: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float]) -> list[tuple[int, float]]:
    """Min-max normalise each retriever's scores to [0, 1], then a weighted sum (absent = 0)."""
    scores: dict[int, float] = {}
    for res, w in zip(results, weights, strict=True):
        if not res:
            continue
        vals = np.array([s for _, s in res], dtype=np.float64)
        lo, span = vals.min(), vals.max() - vals.min()
        for (cid, _), v in zip(res, vals, strict=True):
            norm = (v - lo) / span if span > 0 else 1.0
            scores[cid] = scores.get(cid, 0.0) + w * float(norm)
    return sorted(scores.items(), key=lambda t: (-t[1], t[0]))


def rank(index, query_vec: np.ndarray, query: str, k: int, mode: str) -> list[tuple[int, float]]:
    """The baselines, straight from a scope's lm.index.HybridIndex: "dense", "bm25", or "rrf" (reciprocal-rank
    fusion of the two, k=60, equal weights)."""
    if mode not in BASELINES:
        raise ValueError(f"search mode must be one of {', '.join(BASELINES)}, not {mode!r}")
    return index.search(query_vec, query, k, mode=mode, weights=(1.0, 1.0), rrf_k=60)


# -------------------------------------------------------------------------------- the product's hybrid


def hybrid_candidates(index, query_vec: np.ndarray, query: str, n: int) -> tuple[list[int], dict[int, float]]:
    """The chunks `hybrid_scores` ranks: a scope's (lm.index.HybridIndex) top n by BM25, then its top n by
    cosine, each once; and the BM25 scores of those BM25 found."""
    dense = index.search(query_vec, None, n, mode="dense")
    sparse = index.search(None, query, n, mode="bm25")
    return list(dict.fromkeys([i for i, _ in sparse] + [i for i, _ in dense])), dict(sparse)


def window_cosines(blob: bytes | None, query_vec: np.ndarray) -> np.ndarray | None:
    """(W,) cosines between the query and a chunk's stored sentence windows (float16 rows); None without."""
    if not blob:
        return None
    windows = np.frombuffer(blob, dtype=np.float16).reshape(-1, query_vec.shape[0])  # (W, dim)
    return windows.astype(np.float32) @ query_vec


def proximity(query_words: list[str], words: list[str], idf: dict[str, float], window: int) -> tuple[float, float]:
    """How closely a chunk's words follow the question's, as shares of the question's idf mass in [0, 1]:

    (the most of it inside any `window` consecutive words, the part of it in question word pairs that
    also occur as pairs in the chunk). BM25 scores each word apart; these reward the one passage where
    the question's terms meet, which is where SQuAD-style answers are.
    """
    terms = {w for w in query_words if w in idf}
    total = sum(idf[w] for w in terms)
    if total == 0 or not words:
        return 0.0, 0.0
    best = 0.0
    for start in range(0, max(1, len(words) - window + 1)):
        best = max(best, sum(idf[w] for w in terms.intersection(words[start:start + window])))
    pairs = {(a, b) for a, b in zip(query_words, query_words[1:], strict=False) if a in terms and b in terms}
    shared = pairs & set(zip(words, words[1:], strict=False))
    return best / total, sum(idf[a] + idf[b] for a, b in shared) / (2 * total)


class HybridWeights(Protocol):
    """The tuned figures of `hybrid_scores` (bot.config.DocumentSettings holds them)."""

    dense_weight: float
    window_weight: float
    rerank_depth: int
    proximity_window: int
    proximity_weight: float
    phrase_weight: float


def hybrid_scores(query: str, cosine: dict[int, float], window: dict[int, float | None], bm25: dict[int, float],
                  texts: dict[int, str], idf: dict[str, float], docs: HybridWeights) -> dict[int, float]:
    """The bot's retrieval score of each candidate chunk (higher is better).

    First stage: BM25 / the best BM25 score + dense_weight * the chunk's cosine + window_weight * its best
    sentence window's cosine (raw cosines, not min-max: they keep "nothing is close" visible). The best
    `rerank_depth` of them then add proximity_weight * word-window coverage and phrase_weight * shared word
    pairs. Tuned on half of COVID-QA with `docent eval retrieval`: BM25 is the stronger retriever on papers
    full of names and numbers, MiniLM adds paraphrases (and does so far better on a sentence or two than on a
    whole chunk), and proximity is what moves the chunk holding the answer up among chunks about the same topic.
    """
    top = max(bm25.values(), default=0.0)

    def best_window(i: int) -> float:  # a chunk stored without windows counts as one window
        return cosine[i] if window.get(i) is None else window[i]

    first = {i: (bm25.get(i, 0.0) / top if top > 0 else 0.0) + docs.dense_weight * cos
             + docs.window_weight * best_window(i) for i, cos in cosine.items()}
    pool = sorted(first, key=lambda i: (-first[i], i))[: docs.rerank_depth]
    query_words = bm25_tokens(query)
    scores = dict(first)  # below the pool's scores, which only go up, so a k > rerank_depth still works
    for i in pool:
        window, pairs = proximity(query_words, bm25_tokens(texts[i]), idf, docs.proximity_window)
        scores[i] = first[i] + docs.proximity_weight * window + docs.phrase_weight * pairs
    return scores
