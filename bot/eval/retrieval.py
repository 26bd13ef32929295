"""Quality figures for retrieval and answers, measured through the product's own code paths.

- retrieval: a SQuAD-style data set's papers are ingested into one scope with `KnowledgeBase.ingest` (a
  SQLite database + index files kept under the data dir, so reruns skip the embedding), then each question
  is searched with `KnowledgeBase.search`; a question is found at rank r when the r-th chunk contains an
  answer span. recall@k and MRR per retrieval mode, for two seeded halves of the questions and for all.
- qa: in bot.eval.qa (the answer metrics `contains_answer` and `token_f1` are here).
- summary: in bot.eval.summary (it shares `half_of`, `sample` and `mean` from here).

The metric functions at the top are pure and small; the `*_eval` functions do the work and return a dict
of figures that the CLI prints as a table and a final JSON line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import DatabaseSettings, Settings

KS = (1, 5, 20)
RETRIEVAL_MODES = ("bm25", "dense", "rrf", "hybrid")  # rrf = the index's plain fusion, hybrid = the product's


# ------------------------------------------------------------------------------------------ data sets


@dataclass
class Question:
    qid: str
    text: str
    answers: list[str]  # for an unanswerable question: SQuAD 2.0's plausible (wrong) answers
    paper: str  # the document name of the paper it is about
    answerable: bool = True


@dataclass
class Paper:
    name: str
    text: str
    questions: list[Question]  # answerable, with at least one gold answer
    unanswerable: list[Question] = field(default_factory=list)  # SQuAD 2.0's is_impossible questions


def load_squad(path: str | Path) -> list[Paper]:
    """Papers (one document per `data[i]`, its paragraphs joined) with their questions."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        items = raw["data"]
    except FileNotFoundError:
        raise FileNotFoundError(f"data set not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a SQuAD-format JSON file (expected {{\"data\": [...]}}): {e}") from None
    papers: list[Paper] = []
    for i, item in enumerate(items):
        try:
            paragraphs = item["paragraphs"]
            doc_id = paragraphs[0].get("document_id", i)
            name = f"{path.stem}-{i:03d}-{doc_id}.txt"
            questions = [
                Question(str(qa["id"]), qa["question"],
                         [a["text"] for a in qa.get("plausible_answers" if qa.get("is_impossible") else "answers", [])
                          if a["text"].strip()], name, answerable=not qa.get("is_impossible"))
                for p in paragraphs for qa in p["qas"]
            ]
            text = "\n\n".join(p["context"] for p in paragraphs)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}: data[{i}] is not a SQuAD article (paragraphs/context/qas): {e!r}") from None
        papers.append(Paper(name, text, [q for q in questions if q.answerable and q.answers],
                            [q for q in questions if not q.answerable]))
    if not papers:
        raise ValueError(f"{path}: no articles in data")
    return papers


# ------------------------------------------------------------------------------------- the metrics


def half_of(key: str, seed: int) -> int:
    """0 or 1, a stable function of (seed, key): the tuning half is 0, the held-out half 1."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[0] & 1


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


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between a prediction and one gold answer."""
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, answers: Iterable[str]) -> bool:
    """The prediction contains one gold answer, compared after SQuAD normalisation."""
    p = f" {squad_normalize(prediction)} "
    return any(f" {squad_normalize(a)} " in p for a in answers if squad_normalize(a))


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# ------------------------------------------------------------------------------------- retrieval


def eval_store(settings: Settings, dataset: Path) -> Path:
    """Where one data set's eval database and index live: keyed by its content, the encoder, the chunking and
    the sentence windows, so a rerun with the same settings reuses the embeddings and a change of what is
    embedded starts afresh (the ranking weights are not part of the key: they apply at search time)."""
    docs = settings.documents
    sha = hashlib.sha256(dataset.read_bytes() + b"\0" + docs.encoder.encode()).hexdigest()[:12]
    encoder = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(docs.encoder).name)  # a hub name, or a model directory
    key = f"{dataset.stem}-{sha}-{encoder}-c{docs.chunk_tokens}-o{docs.chunk_overlap_tokens}-w{docs.window_sentences}"
    return settings.data_dir / "eval" / key


def eval_settings(settings: Settings, store: Path) -> Settings:
    """The same settings with their own data dir and SQLite database (never the bot's database)."""
    return dataclasses.replace(settings, data_dir=store, database=DatabaseSettings(url=""))


async def open_knowledge(settings: Settings):
    """(engine, KnowledgeBase) over settings' database, migrated to the latest schema."""
    from bot.db.session import create_engine, session_factory, upgrade
    from bot.services.knowledge import KnowledgeBase

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await upgrade(settings.database_url)
    engine = create_engine(settings.database_url)
    return engine, KnowledgeBase(settings, session_factory(engine))


async def ingest_papers(kb, scope: str, papers: list[Paper], show_progress: bool = True) -> None:
    """Ingest every paper as a text document, the way `docent ingest` does (already present = skipped)."""
    from tqdm import tqdm

    present = {d.name for d in await kb.documents(scope)}
    todo = [p for p in papers if p.name not in present]
    if not todo:
        return
    bar = tqdm(todo, desc="ingesting papers", unit="paper", disable=not show_progress)
    for paper in bar:
        await kb.ingest(scope, paper.text.encode("utf-8"), paper.name, mime="text/plain",
                        progress=lambda stage, frac: bar.set_postfix_str(stage))
    bar.close()


SCOPE = "eval"


def sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded random sample of `limit` items in their original order (all of them when limit is None)."""
    import random

    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, not {limit}")
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def split_figures(ranks: list[int | None], halves: list[int], ks: Sequence[int] = KS) -> dict[str, dict]:
    """ranking_metrics for the tuning half (0), the held-out half (1) and all questions."""
    return {"tune": ranking_metrics([r for r, h in zip(ranks, halves, strict=True) if h == 0], ks),
            "test": ranking_metrics([r for r, h in zip(ranks, halves, strict=True) if h == 1], ks),
            "all": ranking_metrics(ranks, ks)}


async def prepare_store(settings: Settings, dataset: Path, show_progress: bool = True):
    """(engine, kb, papers) with every paper of the data set ingested into the eval scope."""
    papers = load_squad(dataset)
    engine, kb = await open_knowledge(eval_settings(settings, eval_store(settings, dataset)))
    try:
        await ingest_papers(kb, SCOPE, papers, show_progress)
    except BaseException:
        await engine.dispose()
        raise
    return engine, kb, papers


async def retrieval_eval(settings: Settings, dataset: str | Path, *, limit: int | None = None, seed: int = 0,
                         k: int = 20, modes: Sequence[str] = RETRIEVAL_MODES, show_progress: bool = True) -> dict:
    """recall@1/5/20 and MRR of `KnowledgeBase.search` per mode, on the tuning half, the held-out half, all."""
    from tqdm import tqdm

    dataset = Path(dataset)
    engine, kb, papers = await prepare_store(settings, dataset, show_progress)
    try:
        questions = sample([q for p in papers for q in p.questions], limit, seed)
        chunks = [text for _, _, text in await kb._scope_rows(SCOPE)]
        coverage = [first_hit(chunks, q.answers) is not None for q in questions]
        ranks: dict[str, list[int | None]] = {m: [] for m in modes}
        started = time.perf_counter()
        for q in tqdm(questions, desc="retrieving", unit="question", disable=not show_progress):
            qvec = kb.encoder.encode([q.text])[0]  # what search() computes; encoded once for every mode
            for mode in modes:
                passages = await kb.search(SCOPE, q.text, k, mode=mode, query_vec=qvec)
                ranks[mode].append(first_hit([p.text for p in passages], q.answers))
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    halves = [half_of(q.qid, seed) for q in questions]
    docs = settings.documents
    return {
        "eval": "retrieval", "dataset": dataset.name, "papers": len(papers), "chunks": len(chunks),
        "questions": len(questions), "seed": seed, "k": k,
        "chunk_tokens": docs.chunk_tokens, "chunk_overlap_tokens": docs.chunk_overlap_tokens,
        "answer_in_some_chunk": mean(coverage),
        "ms_per_query": 1000 * seconds / max(1, len(questions) * len(modes)),
        "modes": {m: split_figures(ranks[m], halves) for m in modes},
    }
