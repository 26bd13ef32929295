"""`docent eval summary`: ROUGE, faithfulness and speed of the product's summaries, next to lead baselines.

Data sets, by the shape of `--dataset`:
- QMSum JSON lines (a file): meeting transcripts with a general "whole meeting" reference summary. The
  transcript is read the way `docent summarize meeting.txt` reads a file (one turn a line, parsed as a
  text document); the lead baseline takes as many words as the reference has (or `lead_words`).
- a folder with `documents.txt` and `references.txt`, one document per line (PyrXSum, XSum-style news):
  lead-1 and lead-3 sentences as baselines, and the published systems' outputs in `summaries/*.summary`
  (same order) scored the same way, for reference.

The product's summary is written by the chat model (`--model NAME`, map-reduce, bot.services.summary_writer) or
extracted (bot.services.summary_pipeline), as [documents] summary_writing and the model's size choose in the bot
(`--writing` overrides). Every system is scored with the `rouge-score` package (ROUGE-1/2/Lsum F1, Porter
stemming; for Lsum the sentences are put on separate lines, as rouge-score expects), by its unsupported rate:
the share of the summary's names, numbers and quoted terms that do not occur in the source (the check written
answers pass, bot.text.support), and by its coverage: the share of the document's sections (as the
writer cuts them) that the summary draws on, a sentence drawing on the section that holds most of its content
words (`summary_check.rests_on`).
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


def coverage(summary: str, sections) -> float:
    """The share of the sections (a summary_check.Source) that the summary's sentences draw on."""
    from bot.services.summary_check import rests_on

    drawn = {rests_on(s, sections, share=0.0) for s in split_sentences(summary)} - {None}
    return len(drawn) / len(sections.sections) if sections.sections else 0.0


def _score(summary: str, reference: str, source: str, sections) -> dict:
    from bot.text.support import claim_terms, unsupported_terms

    return {**rouge(summary, reference), "checked": len(claim_terms(summary)),
            "unsupported": unsupported_terms(summary, source), "words": len(summary.split()),
            "coverage": coverage(summary, sections)}


def _figures(rows: list[dict], system: str) -> dict:
    """Mean ROUGE, the unsupported rate (over all checked terms of the rows) and words per summary."""
    scores = [r["systems"][system] for r in rows]
    checked = sum(s["checked"] for s in scores)
    return {**{k: mean(s[k] for s in scores) for k in METRICS},
            "unsupported_rate": sum(len(s["unsupported"]) for s in scores) / checked if checked else 0.0,
            "coverage": mean(s["coverage"] for s in scores), "words": mean(s["words"] for s in scores),
            "n": len(scores)}


def _written(pieces: list[str], model, sentences: int | None) -> tuple[str, dict]:
    """The model's summary (map-reduce, checked), one sentence a line, and what the writer did."""
    from bot.services.summary_writer import model_writer, section_budget, write_summary

    out = write_summary(pieces, model_writer(model), model.count_tokens, sentences=sentences,
                        section_tokens=section_budget(model.context_tokens))
    return "\n".join(out.sentences), {"replaced": out.replaced, "dropped": out.dropped, "calls": out.calls,
                                      "sentences": len(out.sentences)}


def summary_eval(settings: Settings, dataset: str | Path, *, limit: int | None = None, seed: int = 0,
                 lead_words: int = 0, rewrite: bool = False, show_progress: bool = True, writing: str | None = None,
                 sentences: int | None = None, **weights) -> dict:
    """ROUGE, unsupported rate, coverage and seconds per document of the product's summary (written by the
    configured model, or extracted: `writing` as [documents] summary_writing) and of the baselines."""
    from tqdm import tqdm

    from bot.documents.parse import DocumentError
    from bot.services.summaries import model_writes
    from bot.services.summary_check import Source
    from bot.services.summary_pipeline import summarize
    from bot.services.summary_writer import SECTION_TOKENS, section_budget, sections_of
    from lm import hub
    from lm.encoder import Encoder

    dataset = Path(dataset)
    kind, items = load_summary_dataset(dataset)
    items = sample(items, limit, seed)
    encoder = Encoder.load(hub.resolve(settings.documents.encoder, settings.cache_dir))
    writing = writing or settings.documents.summary_writing
    model = None
    if rewrite or writing != "extract":
        from bot.services.lm_gateway import ChatModel

        model = ChatModel.load(settings)
    writes = model is not None and model_writes(writing, model)
    count = model.count_tokens if model is not None else encoder.count_tokens
    budget = section_budget(model.context_tokens) if model is not None else SECTION_TOKENS
    rows = []
    for item in tqdm(items, desc="summarizing", unit="document", disable=not show_progress):
        t0 = time.perf_counter()
        source_text = "\n".join(item["transcript"]) if kind == "qmsum" else item["document"]
        summary, error, rewritten, how = "", None, 0, {}
        try:
            pieces = (transcript_sections(item["transcript"], settings) if kind == "qmsum"
                      else _parse_text(item["document"], "document.txt", settings))
        except DocumentError as e:  # the product would refuse this document: counted, not hidden
            pieces, error = [], e.message
        t1 = time.perf_counter()
        if pieces and writes:
            summary, how = _written(pieces, model, sentences)
        if pieces and not summary:  # extracted, as in the bot, also when nothing written passed the check
            result = summarize(pieces, encoder, model=model, rewrite=rewrite, **weights)
            summary, rewritten = "\n".join(result.sentences), result.rewritten
        t2 = time.perf_counter()
        sections = Source(sections_of(pieces or [source_text], count, budget))
        source, reference = source_text, item["reference"]
        baselines = ({"lead": lead(item["transcript"], lead_words or len(reference.split()))} if kind == "qmsum"
                     else {"lead-1": lead_sentences(source_text, 1), "lead-3": lead_sentences(source_text, 3),
                           **item["systems"]})
        rows.append({"id": item["id"], "half": half_of(item["id"], seed), "summary": summary, "error": error,
                     "reference": reference, "parse_s": t1 - t0, "seconds": t2 - t1,
                     "source_words": len(source_text.split()), "rewritten": rewritten, "writer": how,
                     "sections": len(sections.sections),
                     "systems": {"summarize": _score(summary, reference, source, sections),
                                 **{name: _score(text, reference, source, sections)
                                    for name, text in baselines.items()}}})
    if model is not None:
        model.close(wait=True, cancel=True)  # before exit (see ChatModel.close)
    systems = list(rows[0]["systems"]) if rows else ["summarize"]
    halves = by_half(rows, [r["half"] for r in rows])
    return {
        "eval": "summary", "dataset": dataset.name, "format": kind, "documents": len(rows), "seed": seed,
        "failed": sum(1 for r in rows if r["error"]),
        "rouge": "rouge-score, Porter stemming, Lsum on sentence lines", "rewrite": rewrite,
        "model": model.label if model is not None else None, "written": writes, "sentences": sentences,
        "sections_per_document": mean(r["sections"] for r in rows),
        "replaced_per_document": mean(r["writer"].get("replaced", 0) for r in rows),
        "dropped_per_document": mean(r["writer"].get("dropped", 0) for r in rows),
        "lead_words": (lead_words or "reference length") if kind == "qmsum" else None,
        "systems": {name: {half: _figures(rs, name) for half, rs in halves.items() if rs} for name in systems},
        "seconds_per_document": mean(r["seconds"] for r in rows),
        "parse_seconds_per_document": mean(r["parse_s"] for r in rows),
        "source_words": mean(r["source_words"] for r in rows),
        "rewritten_per_document": mean(r["rewritten"] for r in rows),
        "examples": rows,
    }
