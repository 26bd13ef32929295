"""`docent eval summary`: ROUGE, faithfulness and speed of the product's summaries, next to lead baselines.

Data sets, by the shape of `--dataset`:
- QMSum JSON lines (a file): meeting transcripts with a general "whole meeting" reference summary. The
  transcript is read the way `docent summarize meeting.txt` reads a file (one turn a line, parsed as a
  text document); the lead baseline takes as many words as the reference has (or `lead_words`).
- a folder with `documents.txt` and `references.txt`, one document per line (PyrXSum, XSum-style news):
  lead-1 and lead-3 sentences as baselines, and the published systems' outputs in `summaries/*.summary`
  (same order) scored the same way, for reference.

Every system is scored with the `rouge-score` package (ROUGE-1/2/Lsum F1, Porter stemming; for Lsum the
sentences are put on separate lines, as rouge-score expects) and by its unsupported rate: the share of the
summary's numbers and capitalised names that do not occur in the source (`summarize.unsupported_terms`).
Figures are given for the tuning half (0), the held-out half (1) of a seeded split by document id, and all.

The small ROUGE functions (`rouge_n`, `rouge_l`, ...) are a transparent re-implementation with the same
tokenisation; the tests check them against rouge-score.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bot.config import Settings
from bot.documents.chunk import split_sentences
from bot.eval.retrieval import half_of, mean, sample

METRICS = ("rouge1", "rouge2", "rougeLsum")


# ------------------------------------------------------------------------------------------ data sets


_MARKER = re.compile(r"\{(?:disfmarker|vocalsound|nonvocalsound|gap|pause|comment)\}")


def clean_turn(text: str) -> str:
    """A QMSum turn without the transcribers' markers ({disfmarker}, {vocalsound}, ...; QMSum's own
    preprocessing drops them too) and without the blanks its tokenisation put before punctuation."""
    text = _MARKER.sub(" ", text)
    text = re.sub(r" (?=[.,?!;:%)]|'(?:s|re|ve|ll|d|m|t)\b|n't\b)", "", " ".join(text.split()))
    return text.strip()


def load_qmsum(path: str | Path) -> list[dict]:
    """QMSum meetings: {"id", "transcript": ["Speaker: words", ...], "reference": general summary, "query"}."""
    import json

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


def lead(transcript: list[str], words: int) -> str:
    """The first `words` words of the transcript: the lead baseline."""
    return " ".join(" ".join(transcript).split()[:words])


def lead_sentences(text: str, k: int) -> str:
    """The first k sentences, one a line."""
    return "\n".join(split_sentences(text)[:k])


def _parse_text(text: str, name: str, settings: Settings) -> list[str]:
    from bot.documents.parse import parse_document

    docs = settings.documents
    parsed = parse_document(text.encode("utf-8"), name, "text/plain", timeout_s=docs.parse_timeout_s,
                            memory_mb=docs.parse_memory_mb, max_bytes=int(docs.max_file_mb * 2**20))
    return [section.text for section in parsed.sections]


def transcript_sections(turns: list[str], settings: Settings) -> list[str]:
    """The transcript as `docent summarize meeting.txt` sees it: one turn a line, parsed as a text document."""
    return _parse_text("\n".join(turns), "meeting.txt", settings)


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


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


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


# ------------------------------------------------------------------------------------------ the eval


def _score(summary: str, reference: str, source: set[str]) -> dict:
    from bot.services.summarize import checked_terms, unsupported_terms

    return {**rouge(summary, reference), "checked": len(checked_terms(summary)),
            "unsupported": unsupported_terms(summary, source), "words": len(summary.split())}


def _figures(rows: list[dict], system: str) -> dict:
    """Mean ROUGE, the unsupported rate (over all checked terms of the rows) and words per summary."""
    scores = [r["systems"][system] for r in rows]
    checked = sum(s["checked"] for s in scores)
    return {**{k: mean(s[k] for s in scores) for k in METRICS},
            "unsupported_rate": sum(len(s["unsupported"]) for s in scores) / checked if checked else 0.0,
            "words": mean(s["words"] for s in scores), "n": len(scores)}


def summary_eval(settings: Settings, dataset: str | Path, *, limit: int | None = None, seed: int = 0,
                 lead_words: int = 0, rewrite: bool = False, show_progress: bool = True, **weights) -> dict:
    """ROUGE, unsupported rate and seconds per document of `summarize.summarize` and of the baselines."""
    from tqdm import tqdm

    from bot.documents.parse import DocumentError
    from bot.services.summarize import source_terms, summarize
    from lm import hub
    from lm.encoder import Encoder

    dataset = Path(dataset)
    kind, items = load_summary_dataset(dataset)
    items = sample(items, limit, seed)
    encoder = Encoder.load(hub.resolve(settings.documents.encoder, settings.cache_dir))
    model = None
    if rewrite:
        from bot.services.models import ChatModel

        model = ChatModel.load(settings)
    rows = []
    for item in tqdm(items, desc="summarizing", unit="document", disable=not show_progress):
        t0 = time.perf_counter()
        source_text = "\n".join(item["transcript"]) if kind == "qmsum" else item["document"]
        summary, error, rewritten = "", None, 0
        try:
            pieces = (transcript_sections(item["transcript"], settings) if kind == "qmsum"
                      else _parse_text(item["document"], "document.txt", settings))
        except DocumentError as e:  # the product would refuse this document: counted, not hidden
            pieces, error = [], e.message
        t1 = time.perf_counter()
        if pieces:
            result = summarize(pieces, encoder, model=model, rewrite=rewrite, **weights)
            summary, rewritten = "\n".join(result.sentences), result.rewritten
        t2 = time.perf_counter()
        source, reference = source_terms(source_text), item["reference"]
        baselines = ({"lead": lead(item["transcript"], lead_words or len(reference.split()))} if kind == "qmsum"
                     else {"lead-1": lead_sentences(source_text, 1), "lead-3": lead_sentences(source_text, 3),
                           **item["systems"]})
        rows.append({"id": item["id"], "half": half_of(item["id"], seed), "summary": summary, "error": error,
                     "reference": reference, "parse_s": t1 - t0, "seconds": t2 - t1,
                     "source_words": len(source_text.split()), "rewritten": rewritten,
                     "systems": {"summarize": _score(summary, reference, source),
                                 **{name: _score(text, reference, source) for name, text in baselines.items()}}})
    systems = list(rows[0]["systems"]) if rows else ["summarize"]
    halves = {"tune": [r for r in rows if r["half"] == 0], "test": [r for r in rows if r["half"] == 1], "all": rows}
    return {
        "eval": "summary", "dataset": dataset.name, "format": kind, "documents": len(rows), "seed": seed,
        "failed": sum(1 for r in rows if r["error"]),
        "rouge": "rouge-score, Porter stemming, Lsum on sentence lines", "rewrite": rewrite,
        "lead_words": (lead_words or "reference length") if kind == "qmsum" else None,
        "systems": {name: {half: _figures(rs, name) for half, rs in halves.items() if rs} for name in systems},
        "seconds_per_document": mean(r["seconds"] for r in rows),
        "parse_seconds_per_document": mean(r["parse_s"] for r in rows),
        "source_words": mean(r["source_words"] for r in rows),
        "rewritten_per_document": mean(r["rewritten"] for r in rows),
        "examples": rows,
    }
