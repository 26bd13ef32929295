"""`docent eval qa`: answers from documents, measured on the product's own pipeline (`answer.answer_question`).

The data set's papers are ingested into an eval scope as `docent ingest` would (bot.eval.retrieval.prepare_store);
then every sampled question goes through exactly what a Telegram user's `/ask` goes through. Scored:

- answerable questions: the answer contains a gold answer (after SQuAD normalisation), is "right" (contains
  one in at most bot.eval.metrics.RIGHT_MAX_WORDS words) and SQuAD token F1,
  which punishes a long answer that merely contains it; how often the sentence quoted under the reply
  contains it; how often the gold answer was in the evidence the model read, and in the retrieved passages;
  how often we said "not found" although there was an answer;
- unanswerable questions (SQuAD 2.0's is_impossible): how often the reply is "not found" rather than an
  answer;
- every reply: the unsupported rate (answers shown with a name, number or quoted term the evidence does not
  have, bot.text.support), loops (a line, or 8 words in a row, said 3 times), the answer's length in words;
- which path answered ("model": written, "copy": a copied span, "": not found), and how often the support check
  refused a written answer (never shown).

Each figure is given for the tuning half, the held-out half (a dev set's recorded split, else
bot.eval.datasets.half_of) and all questions. The data set is SQuAD-format JSON or a folder of real documents
with questions.json (bot.eval.realdocs), whose files are uploaded as they are.
"""

from __future__ import annotations

import time
from pathlib import Path

from bot.config import Settings
from bot.eval.datasets import by_half, question_half, sample
from bot.eval.metrics import contains_answer, first_hit, loops, mean, right, token_f1, word_count
from bot.eval.retrieval import SCOPE, prepare_store


def score_row(q, result, seconds: float) -> dict:
    """One question's figures from its answer_question result."""
    from bot.text.support import unsupported_terms

    reply = result.render()
    quoted = result.source.text if result.source else (result.evidence[0].text if result.evidence else "")
    read = [f"{e.before} {e.text}" for e in result.evidence]
    row = {"qid": q.qid, "question": q.text, "answerable": q.answerable, "gold": q.answers[:3],
           "answer": result.text, "reply": reply, "not_found": not result.found, "seconds": seconds,
           "unsupported": result.found and bool(unsupported_terms(result.text, read)),
           "loops": loops(reply) or loops(result.written), "path": result.path, "written": result.written,
           "rejected": result.rejected, "kind": q.kind, "words": word_count(result.text) if result.found else 0}
    if q.answerable:
        row |= {"contains": result.found and contains_answer(result.text, q.answers),
                "right": result.found and right(result.text, q.answers),
                "f1": max(token_f1(result.text, a) for a in q.answers) if result.found else 0.0,
                "quote_contains": first_hit([quoted], q.answers) is not None,
                "in_evidence": first_hit([e.text for e in result.evidence], q.answers) is not None,
                "in_passages": first_hit([p.text for p in result.retrieved], q.answers) is not None}
    return row


def figures(rows: list[dict]) -> dict:
    """The summary figures of a set of rows."""
    ans = [r for r in rows if r["answerable"]]
    imp = [r for r in rows if not r["answerable"]]
    given = [r for r in rows if not r["not_found"]]
    return {
        "answerable": len(ans), "unanswerable": len(imp),
        "contains_gold": mean(r["contains"] for r in ans), "f1": mean(r["f1"] for r in ans),
        "right": mean(r["right"] for r in ans),
        "quote_contains_gold": mean(r["quote_contains"] for r in ans),
        "gold_in_evidence": mean(r["in_evidence"] for r in ans),
        "gold_in_passages": mean(r["in_passages"] for r in ans),
        "answerable_not_found": mean(r["not_found"] for r in ans),
        "unanswerable_not_found": mean(r["not_found"] for r in imp) if imp else None,
        "unsupported_rate": mean(r["unsupported"] for r in given), "loops": sum(r["loops"] for r in rows),
        "seconds_per_question": mean(r["seconds"] for r in rows),
        "answer_words": mean(r.get("words", 0) for r in given) if given else 0.0,
        "written_rejected": mean(bool(r.get("rejected")) for r in rows),
        "paths": {p or "not found": sum(r.get("path", "") == p for r in rows) for p in ("model", "copy", "")},
    }


async def qa_eval(settings: Settings, dataset: str | Path, *, limit: int | None = 30, seed: int = 0,
                  show_progress: bool = True, writing: str | None = None, half: int | None = None) -> dict:
    """Answers end to end through `answer.answer_question`, scored against gold. `limit` samples that many
    answerable questions and, where the set has them, that many unanswerable ones (None: all); `half` (0 tune,
    1 held-out) keeps only that half's questions."""

    from tqdm import tqdm

    from bot.services import answer

    dataset = Path(dataset)
    async with prepare_store(settings, dataset, show_progress) as (services, papers):
        questions = (sample([q for p in papers for q in p.questions], limit, seed)
                     + sample([q for p in papers for q in p.unanswerable], limit, seed))
        questions = [q for q in questions if half is None or question_half(q, seed) == half]
        model = await services.models.current()
        rows = []
        for q in tqdm(questions, desc="answering", unit="question", disable=not show_progress):
            t0 = time.perf_counter()
            result = await answer.answer_question(q.text, knowledge=services.knowledge, model=model, scope=SCOPE,
                                                  force=True, writing=writing)
            rows.append(score_row(q, result, time.perf_counter() - t0) | {"half": question_half(q, seed)})
    return {
        "eval": "qa", "dataset": dataset.name, "seed": seed, "model": settings.model.name,
        "writing": answer.writing_mode(writing or settings.documents.writing, model),
        "halves": {half: figures(rs) for half, rs in by_half(rows, [r["half"] for r in rows]).items()},
        "examples": rows,
    }
