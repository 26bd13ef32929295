"""A dev set of real documents (tests/data/realdocs): real files with questions whose answers were read in them.

The folder holds the files as they were taken (PDF, HTML, Markdown, text) and `questions.json`:
`{"questions": [{"id", "document", "kind", "question", "answerable", "answers", "split"}, ...]}`. `load_doc_set`
gives one `Paper` per file with its `path`, so the evals upload the file itself through the product's parser
(bot.eval.retrieval.ingest_papers) rather than a text someone extracted; the questions keep their recorded
tune / held-out split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bot.eval.datasets import Paper, Question

QUESTIONS_FILE = "questions.json"
SPLITS = ("tune", "held-out")
NOT_DOCUMENTS = (QUESTIONS_FILE, "README.md")


def is_doc_set(path: str | Path) -> bool:
    """A folder with a questions.json beside its documents."""
    return (Path(path) / QUESTIONS_FILE).is_file()


def _question(row: dict, where: str) -> Question:
    """One questions.json row as a Question; a ValueError that names the row and what is wrong with it."""
    try:
        qid, doc, text = str(row["id"]), str(row["document"]), str(row["question"]).strip()
        answerable, answers = bool(row.get("answerable", True)), [str(a) for a in row.get("answers", [])]
        split = row.get("split")
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: a question needs id, document and question: {e!r}") from None
    if not text:
        raise ValueError(f"{where} ({qid}): the question is empty")
    if answerable and not any(a.strip() for a in answers):
        raise ValueError(f"{where} ({qid}): an answerable question needs at least one gold answer")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where} ({qid}): split must be one of {', '.join(SPLITS)}, not {split!r}")
    return Question(qid, text, answers, doc, answerable=answerable, kind=str(row.get("kind", "")), split=split)


def load_questions(path: str | Path) -> list[Question]:
    """Every question of the set's questions.json, in file order; ids must be unique."""
    file = Path(path) / QUESTIONS_FILE
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))["questions"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {QUESTIONS_FILE} (a dev set is a folder of documents with one)") \
            from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: expected {{\"questions\": [...]}}: {e}") from None
    questions = [_question(row, f"{file}: questions[{i}]") for i, row in enumerate(rows)]
    ids = [q.qid for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{file}: question ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    if not questions:
        raise ValueError(f"{file}: no questions")
    return questions


def load_doc_set(path: str | Path) -> list[Paper]:
    """One Paper per document the questions name (its file uploaded as it is), with its questions."""
    path = Path(path)
    questions = load_questions(path)
    papers: dict[str, Paper] = {}
    for q in questions:
        if q.paper not in papers:
            file = path / q.paper
            if not file.is_file() or file.parent != path:
                raise FileNotFoundError(f"{path}: question {q.qid} is about {q.paper}, which is not in the folder")
            papers[q.paper] = Paper(q.paper, "", [], path=file)
        (papers[q.paper].questions if q.answerable else papers[q.paper].unanswerable).append(q)
    return list(papers.values())


def content_key(path: str | Path) -> bytes:
    """A digest of the set's documents (names and bytes): what an eval store is keyed by. The questions and the
    README are not indexed, so editing them keeps the store and its embeddings."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file() and p.name not in NOT_DOCUMENTS):
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.digest()
