"""The public data sets the evals read, and how their items are sampled and split into halves.

- SQuAD-format JSON (COVID-QA, SQuAD 2.0): `load_squad`, one paper per article with its questions;
- QMSum JSON lines: `load_qmsum`, meeting transcripts with a general reference summary;
- a folder with `documents.txt` and `references.txt`, one document a line (PyrXSum): `load_folder`;
- a folder of real files with `questions.json` (tests/data/realdocs): bot.eval.realdocs, through `load_qa`.

`sample` takes a seeded sample of the items; `half_of` puts each item, by its id, in the tuning half (0) or
the held-out half (1), and `by_half` groups anything by those halves for the figures.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

# ------------------------------------------------------------------------------------------ SQuAD


@dataclass
class Question:
    qid: str
    text: str
    answers: list[str]  # for an unanswerable question: SQuAD 2.0's plausible (wrong) answers
    paper: str  # the document name of the paper it is about
    answerable: bool = True
    kind: str = ""  # what is asked (a dev set's fact, number, why, ...); "" where the set does not say
    split: str | None = None  # a dev set's own "tune" / "held-out" mark; None: half_of decides


@dataclass
class Paper:
    name: str
    text: str
    questions: list[Question]  # answerable, with at least one gold answer
    unanswerable: list[Question] = field(default_factory=list)  # SQuAD 2.0's is_impossible questions
    path: Path | None = None  # a real file, uploaded as it is (bot.eval.realdocs); None: `text` as plain text


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


def load_qa(path: str | Path) -> list[Paper]:
    """The papers of a question set: a folder of real documents with questions.json, or SQuAD-format JSON."""
    from bot.eval.realdocs import is_doc_set, load_doc_set

    return load_doc_set(path) if is_doc_set(path) else load_squad(path)


# ------------------------------------------------------------------------------------------ QMSum


_MARKER = re.compile(r"\{(?:disfmarker|vocalsound|nonvocalsound|gap|pause|comment)\}")


def clean_turn(text: str) -> str:
    """A QMSum turn without the transcribers' markers ({disfmarker}, {vocalsound}, ...; QMSum's own
    preprocessing drops them too) and without the blanks its tokenisation put before punctuation."""
    text = _MARKER.sub(" ", text)
    text = re.sub(r" (?=[.,?!;:%)]|'(?:s|re|ve|ll|d|m|t)\b|n't\b)", "", " ".join(text.split()))
    return text.strip()


def load_qmsum(path: str | Path) -> list[dict]:
    """QMSum meetings: {"id", "transcript": ["Speaker: words", ...], "reference": general summary, "query"}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data set not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            said = [(t["speaker"], clean_turn(t["content"])) for t in row["meeting_transcripts"]]
            turns = [f"{who}: {text}" for who, text in said if text]  # not a turn that was only markers
            general = row["general_query_list"]
            reference = general[0]["answer"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}:{n}: not a QMSum line (meeting_transcripts, general_query_list): {e!r}") \
                from None
        out.append({"id": f"line-{n}", "transcript": turns, "reference": reference, "query": general[0]["query"]})
    if not out:
        raise ValueError(f"{path}: no meetings")
    return out


# ---------------------------------------------------------------------------- a folder of documents


# XSum's documents were stored one sentence a line and joined without a blank: "season.The former ...".
_JOINED = re.compile(r"(?<=[a-z0-9%)\"'”’])([.!?][\"'”’]?)(?=[A-Z\"“‘])")


def unjoin_sentences(text: str) -> str:
    """A blank after end punctuation glued to the next sentence's capital (an artefact of the data set)."""
    return _JOINED.sub(r"\1 ", text)


def load_folder(path: str | Path) -> list[dict]:
    """Documents and references, one per line, with the published outputs found in summaries/*.summary:
    [{"id", "document", "reference", "systems": {name: summary}}]."""
    path = Path(path)
    docs_file, refs_file = path / "documents.txt", path / "references.txt"
    if not docs_file.is_file() or not refs_file.is_file():
        raise FileNotFoundError(f"{path}: expected documents.txt and references.txt (one document per line)")

    def lines(p: Path) -> list[str]:
        return p.read_text(encoding="utf-8").rstrip("\n").split("\n")

    docs, refs = lines(docs_file), lines(refs_file)
    if len(docs) != len(refs):
        raise ValueError(f"{path}: {len(docs)} documents but {len(refs)} references")
    ids = lines(path / "ids.txt") if (path / "ids.txt").is_file() else [str(i) for i in range(len(docs))]
    if len(ids) != len(docs):
        raise ValueError(f"{path}: {len(ids)} ids for {len(docs)} documents")
    systems = {}
    for f in sorted((path / "summaries").glob("*.summary")) if (path / "summaries").is_dir() else []:
        outputs = lines(f)
        if len(outputs) == len(docs):  # a file for another ordering would score nonsense: left out
            systems[f.stem] = outputs
    out = []
    for i, (doc, ref) in enumerate(zip(docs, refs, strict=True)):
        if doc.strip() and ref.strip():
            out.append({"id": ids[i], "document": unjoin_sentences(doc.strip()), "reference": ref.strip(),
                        "systems": {name: outputs[i] for name, outputs in systems.items()}})
    if not out:
        raise ValueError(f"{path}: no documents")
    return out


def load_summary_dataset(path: str | Path) -> tuple[str, list[dict]]:
    """("folder", documents) for a folder, ("qmsum", meetings) for a JSON-lines file."""
    path = Path(path)
    return ("folder", load_folder(path)) if path.is_dir() else ("qmsum", load_qmsum(path))


# ------------------------------------------------------------------------------- sampling and halves


def sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded random sample of `limit` items in their original order (all of them when limit is None)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, not {limit}")
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def half_of(key: str, seed: int) -> int:
    """0 or 1, a stable function of (seed, key): the tuning half is 0, the held-out half 1."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[0] & 1


def question_half(q: Question, seed: int) -> int:
    """The half a question is in: the split its data set records, else half_of its id."""
    if q.split is not None:
        return 0 if q.split == "tune" else 1
    return half_of(q.qid, seed)


def by_half(items: list, halves: list[int]) -> dict[str, list]:
    """The items of the tuning half (0), of the held-out half (1) and all of them: {"tune", "test", "all"}."""
    return {"tune": [x for x, h in zip(items, halves, strict=True) if h == 0],
            "test": [x for x, h in zip(items, halves, strict=True) if h == 1], "all": list(items)}
