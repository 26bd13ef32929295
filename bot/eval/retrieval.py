"""`docent eval retrieval`: retrieval quality measured through the product's own code path.

A SQuAD-style data set's papers are ingested into one scope with `KnowledgeBase.ingest` (a SQLite database +
index files kept under the data dir, so reruns skip the embedding), then each question is searched with
`KnowledgeBase.search`; a question is found at rank r when the r-th chunk contains an answer span. recall@k
and MRR per retrieval mode, for two seeded halves of the questions and for all.

The eval store (`prepare_store`) is shared with `docent eval qa` (bot.eval.qa). The `*_eval` functions do the
work and return a dict of figures that the CLI prints as a table and a final JSON line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import DatabaseSettings, Settings
from bot.eval.datasets import Paper, load_qa, question_half, sample
from bot.eval.metrics import first_hit, mean, split_figures

if TYPE_CHECKING:
    from bot.services import Services

RETRIEVAL_MODES = ("bm25", "dense", "rrf", "hybrid")  # rrf = the index's plain fusion, hybrid = the product's
SCOPE = "eval"


def eval_store(settings: Settings, dataset: Path) -> Path:
    """Where one data set's eval database and index live: keyed by its content, the encoder, the chunking and
    the sentence windows, so a rerun with the same settings reuses the embeddings and a change of what is
    embedded starts afresh (the ranking weights are not part of the key: they apply at search time)."""
    docs = settings.documents
    from bot.eval.realdocs import content_key

    content = content_key(dataset) if dataset.is_dir() else dataset.read_bytes()
    sha = hashlib.sha256(content + b"\0" + docs.encoder.encode()).hexdigest()[:12]
    encoder = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(docs.encoder).name)  # a hub name, or a model directory
    key = f"{dataset.stem}-{sha}-{encoder}-c{docs.chunk_tokens}-o{docs.chunk_overlap_tokens}-w{docs.window_sentences}"
    return settings.data_dir / "eval" / key


def eval_settings(settings: Settings, store: Path) -> Settings:
    """The same settings with their own data dir and SQLite database (never the bot's database)."""
    return dataclasses.replace(settings, data_dir=store, database=DatabaseSettings(url=""))


async def ingest_papers(kb, scope: str, papers: list[Paper], show_progress: bool = True) -> None:
    """Ingest every paper the way `docent ingest` does (already present = skipped): a real file as it is,
    through the product's parser; a data set's text as a text document."""
    from tqdm import tqdm

    present = {d.name for d in await kb.documents(scope)}
    todo = [p for p in papers if p.name not in present]
    if not todo:
        return
    bar = tqdm(todo, desc="ingesting papers", unit="paper", disable=not show_progress)
    for paper in bar:
        data, mime = (paper.path.read_bytes(), None) if paper.path else (paper.text.encode("utf-8"), "text/plain")
        await kb.ingest(scope, data, paper.name, mime=mime, progress=lambda stage, frac: bar.set_postfix_str(stage))
    bar.close()


@asynccontextmanager
async def prepare_store(settings: Settings, dataset: Path,
                        show_progress: bool = True) -> AsyncIterator[tuple[Services, list[Paper]]]:
    """(services, papers) over the data set's eval store, every paper ingested into the eval scope; the
    database is closed on leaving."""
    from bot.services import open_services

    papers = load_qa(dataset)
    engine, services = await open_services(eval_settings(settings, eval_store(settings, dataset)))
    try:
        await ingest_papers(services.knowledge, SCOPE, papers, show_progress)
        yield services, papers
    finally:
        await engine.dispose()


async def retrieval_eval(settings: Settings, dataset: str | Path, *, limit: int | None = None, seed: int = 0,
                         k: int = 20, modes: Sequence[str] = RETRIEVAL_MODES, show_progress: bool = True) -> dict:
    """recall@1/5/20 and MRR of `KnowledgeBase.search` per mode, on the tuning half, the held-out half, all."""
    from tqdm import tqdm

    dataset = Path(dataset)
    async with prepare_store(settings, dataset, show_progress) as (services, papers):
        kb = services.knowledge
        questions = sample([q for p in papers for q in p.questions], limit, seed)
        chunks = await kb.chunk_texts(SCOPE)
        coverage = [first_hit(chunks, q.answers) is not None for q in questions]
        ranks: dict[str, list[int | None]] = {m: [] for m in modes}
        started = time.perf_counter()
        for q in tqdm(questions, desc="retrieving", unit="question", disable=not show_progress):
            qvec = kb.encoder.encode([q.text])[0]  # what search() computes; encoded once for every mode
            for mode in modes:
                passages = await kb.search(SCOPE, q.text, k, mode=mode, query_vec=qvec)
                ranks[mode].append(first_hit([p.text for p in passages], q.answers))
        seconds = time.perf_counter() - started
    halves = [question_half(q, seed) for q in questions]
    docs = settings.documents
    return {
        "eval": "retrieval", "dataset": dataset.name, "papers": len(papers), "chunks": len(chunks),
        "questions": len(questions), "seed": seed, "k": k,
        "chunk_tokens": docs.chunk_tokens, "chunk_overlap_tokens": docs.chunk_overlap_tokens,
        "answer_in_some_chunk": mean(coverage),
        "ms_per_query": 1000 * seconds / max(1, len(questions) * len(modes)),
        "modes": {m: split_figures(ranks[m], halves) for m in modes},
    }
