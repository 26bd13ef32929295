"""Quality figures for retrieval, answers and summaries, measured through the product's own code paths.

- retrieval: a SQuAD-style data set's papers are ingested into one scope with `KnowledgeBase.ingest` (a
  SQLite database + index files kept under the data dir, so reruns skip the embedding), then each question
  is searched with `KnowledgeBase.search`; a question is found at rank r when the r-th chunk contains an
  answer span. recall@k and MRR per retrieval mode, for two seeded halves of the questions and for all.
- qa: retrieval -> `answer.relevant` -> `answer.build_prompt` -> `ChatModel.stream_chat` (greedy), scored
  by "the answer contains the gold answer" and SQuAD token F1; and, apart from the model's answer, whether
  the quote shown under it (the sentences of a cited passage closest to the question) contains the gold span.
- summary: QMSum meetings, each parsed as a text document the way `docent summarize` reads a file, then
  `summarize.summarize` (map-reduce); ROUGE-1/2/L F1 (our own, no stemming) against the general "whole
  meeting" reference, next to a lead baseline (the first N words, N = the reference's length by default).

The metric functions at the top are pure and small; the three `*_eval` functions do the work and return
a dict of figures that the CLI prints as a table and a final JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import string
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import DatabaseSettings, Settings

KS = (1, 5, 20)
RETRIEVAL_MODES = ("bm25", "dense", "rrf", "hybrid")  # rrf = the index's plain fusion, hybrid = the product's


# ------------------------------------------------------------------------------------------ data sets


@dataclass
class Question:
    qid: str
    text: str
    answers: list[str]
    paper: str  # the document name of the paper it is about


@dataclass
class Paper:
    name: str
    text: str
    questions: list[Question]


def load_squad(path: str | Path) -> list[Paper]:
    """Papers (one document per `data[i]`, its paragraphs joined) with their answerable questions."""
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
                Question(str(qa["id"]), qa["question"], [a["text"] for a in qa["answers"] if a["text"].strip()], name)
                for p in paragraphs for qa in p["qas"] if not qa.get("is_impossible")
            ]
            text = "\n\n".join(p["context"] for p in paragraphs)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}: data[{i}] is not a SQuAD article (paragraphs/context/qas): {e!r}") from None
        papers.append(Paper(name, text, [q for q in questions if q.answers]))
    if not papers:
        raise ValueError(f"{path}: no articles in data")
    return papers


def load_qmsum(path: str | Path) -> list[dict]:
    """QMSum meetings: {"transcript": [ "Speaker: words", ...], "reference": general summary}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data set not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = [f"{t['speaker']}: {t['content']}" for t in row["meeting_transcripts"]]
            general = row["general_query_list"]
            reference = general[0]["answer"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}:{n}: not a QMSum line (meeting_transcripts, general_query_list): {e!r}") \
                from None
        out.append({"transcript": turns, "reference": reference, "query": general[0]["query"]})
    if not out:
        raise ValueError(f"{path}: no meetings")
    return out


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


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE's tokenisation without stemming: lower-cased runs of ASCII letters and digits."""
    return _ROUGE_TOKEN.findall(text.lower())


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F1: clipped n-gram overlap."""
    def grams(tokens: list[str]) -> Counter:
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    p, r = grams(rouge_tokens(prediction)), grams(rouge_tokens(reference))
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


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over the whole text (summary-level LCS without sentence splitting)."""
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    return _f1(lcs_length(p, r), len(p), len(r))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    return {"rouge1": rouge_n(prediction, reference, 1), "rouge2": rouge_n(prediction, reference, 2),
            "rougeL": rouge_l(prediction, reference)}


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


async def qa_eval(settings: Settings, dataset: str | Path, *, limit: int = 30, seed: int = 0,
                  min_dense: float | None = None, show_progress: bool = True) -> dict:
    """Answers end to end (search -> relevant -> build_prompt -> greedy stream_chat), scored against gold."""
    from tqdm import tqdm

    from bot.services import answer
    from bot.services.models import ChatModel, Sampling

    dataset = Path(dataset)
    engine, kb, papers = await prepare_store(settings, dataset, show_progress)
    try:
        questions = sample([q for p in papers for q in p.questions], limit, seed)
        model = await asyncio.to_thread(ChatModel.load, settings)
        sampling = Sampling.from_settings(settings.model, temperature=0.0,
                                          max_new_tokens=settings.documents.answer_max_new_tokens)
        budget = answer.prompt_budget(model.context_tokens, settings.documents.answer_max_new_tokens)
        rows = []
        for q in tqdm(questions, desc="answering", unit="question", disable=not show_progress):
            t0 = time.perf_counter()
            passages = answer.relevant(await kb.search(SCOPE, q.text), q.text,
                                       answer.MIN_DENSE if min_dense is None else min_dense)
            t1 = time.perf_counter()
            if passages:
                grounded = answer.build_prompt(q.text, passages, [], budget, model.count_tokens)
                text = "".join(await asyncio.to_thread(lambda g=grounded: list(model.stream_chat(g.messages, sampling))))
                used = grounded.passages
                quote = answer.format_quote(answer.cited_passages(text, used))  # as answer.sources_note
            else:
                text, used, quote = answer.NOT_FOUND, [], ""
            t2 = time.perf_counter()
            rows.append({"qid": q.qid, "question": q.text, "gold": q.answers[0], "answer": text.strip(),
                         "contains": contains_answer(text, q.answers), "f1": max(token_f1(text, a) for a in q.answers),
                         "quote": quote, "quote_contains": first_hit([quote], q.answers) is not None,
                         "in_prompt": first_hit([p.text for p in used], q.answers) is not None,
                         "not_found": not used, "retrieve_s": t1 - t0, "generate_s": t2 - t1,
                         "tokens": model.count_tokens(text)})
    finally:
        await engine.dispose()
    gen_s = sum(r["generate_s"] for r in rows)
    return {
        "eval": "qa", "dataset": dataset.name, "questions": len(rows), "seed": seed, "model": settings.model.name,
        "contains_gold": mean(r["contains"] for r in rows), "f1": mean(r["f1"] for r in rows),
        "quote_contains_gold": mean(r["quote_contains"] for r in rows),
        "answer_in_prompt": mean(r["in_prompt"] for r in rows), "not_found": mean(r["not_found"] for r in rows),
        "retrieve_s_per_question": mean(r["retrieve_s"] for r in rows),
        "generate_s_per_question": mean(r["generate_s"] for r in rows),
        "answer_tokens_per_s": sum(r["tokens"] for r in rows) / gen_s if gen_s > 0 else 0.0,
        "examples": rows,
    }


def lead(transcript: list[str], words: int) -> str:
    """The first `words` words of the transcript: the lead baseline."""
    return " ".join(" ".join(transcript).split()[:words])


def transcript_sections(turns: list[str], settings: Settings) -> list[str]:
    """The transcript as `docent summarize meeting.txt` sees it: one turn a line, parsed as a text document.

    (Passing the ~900 turns as separate pieces fails: summarize.windows counts each piece but not the
    separators between them, so a window of many short turns overflows the context.)
    """
    from bot.knowledge.parse import parse_document

    docs = settings.documents
    parsed = parse_document("\n".join(turns).encode("utf-8"), "meeting.txt", "text/plain",
                            timeout_s=docs.parse_timeout_s, memory_mb=docs.parse_memory_mb,
                            max_bytes=int(docs.max_file_mb * 2**20))
    return [section.text for section in parsed.sections]


def summary_eval(settings: Settings, dataset: str | Path, *, limit: int = 5, seed: int = 0, lead_words: int = 0,
                 show_progress: bool = True) -> dict:
    """ROUGE-1/2/L F1 of `summarize` (map-reduce) against QMSum's general summary, and of a lead baseline.

    lead_words = 0: the lead baseline takes as many words as the reference has; else that fixed count.
    """
    from tqdm import tqdm

    from bot.services.models import ChatModel
    from bot.services.summarize import summarize

    dataset = Path(dataset)
    meetings = sample(load_qmsum(dataset), limit, seed)
    model = ChatModel.load(settings)
    rows = []
    for i, m in enumerate(meetings):
        bar = tqdm(desc=f"meeting {i + 1}/{len(meetings)}", unit="part", disable=not show_progress)

        def progress(done: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.update(done - bar.n)

        t0 = time.perf_counter()
        try:
            text, error = summarize(model, transcript_sections(m["transcript"], settings), progress=progress), None
        except ValueError as e:  # the product could not summarize this meeting: counted, not hidden
            text, error = "", str(e)
        bar.close()
        n_lead = lead_words or len(m["reference"].split())
        rows.append({"summary": text, "error": error, "reference": m["reference"], "seconds": time.perf_counter() - t0,
                     "transcript_words": sum(len(t.split()) for t in m["transcript"]),
                     "model": rouge(text, m["reference"]), "lead": rouge(lead(m["transcript"], n_lead), m["reference"])})
    return {
        "eval": "summary", "dataset": dataset.name, "meetings": len(rows), "seed": seed, "model": settings.model.name,
        "lead_words": lead_words or "reference length", "rouge": "own implementation, no stemming",
        "failed": sum(1 for r in rows if r["error"]),
        "summarize": {k: mean(r["model"][k] for r in rows) for k in ("rouge1", "rouge2", "rougeL")},
        "lead": {k: mean(r["lead"][k] for r in rows) for k in ("rouge1", "rouge2", "rougeL")},
        "summary_words": mean(len(r["summary"].split()) for r in rows),
        "seconds_per_meeting": mean(r["seconds"] for r in rows),
        "examples": rows,
    }
