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
The readers are in bot.eval.datasets, ROUGE in bot.eval.metrics.
"""

from __future__ import annotations

import time
from pathlib import Path

from bot.config import Settings
from bot.documents.chunk import split_sentences
from bot.eval.datasets import by_half, half_of, load_summary_dataset, sample
from bot.eval.metrics import METRICS, mean, rouge

# ------------------------------------------------------------------------------------- the baselines


def lead(transcript: list[str], words: int) -> str:
    """The first `words` words of the transcript: the lead baseline."""
    return " ".join(" ".join(transcript).split()[:words])


def lead_sentences(text: str, k: int) -> str:
    """The first k sentences, one a line."""
    return "\n".join(split_sentences(text)[:k])


def _parse_text(text: str, name: str, settings: Settings) -> list[str]:
    from bot.documents.parse import parse_document

    parsed = parse_document(text.encode("utf-8"), name, "text/plain", **settings.documents.parse_limits())
    return [section.text for section in parsed.sections]


def transcript_sections(turns: list[str], settings: Settings) -> list[str]:
    """The transcript as `docent summarize meeting.txt` sees it: one turn a line, parsed as a text document."""
    return _parse_text("\n".join(turns), "meeting.txt", settings)


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
    if model is not None:
        model.close(wait=True, cancel=True)  # before exit (see ChatModel.close)
    systems = list(rows[0]["systems"]) if rows else ["summarize"]
    halves = by_half(rows, [r["half"] for r in rows])
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
