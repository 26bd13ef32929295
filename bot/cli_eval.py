"""`docent eval retrieval|qa|summary`: quality figures on SQuAD-style and QMSum-style data sets.

The work is in bot.services.evaluate; this file parses the arguments and prints a table, then ONE JSON
line with the figures (per-example rows go to --out, not to the JSON line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from bot.config import Settings

DEFAULT_LIMITS = {"retrieval": None, "qa": 30, "summary": 5}  # None = every question


def _print_retrieval(r: dict) -> None:
    print(f"{r['dataset']}: {r['papers']} papers, {r['chunks']} chunks ({r['chunk_tokens']} tokens, overlap "
          f"{r['chunk_overlap_tokens']}), {r['questions']} questions, seed {r['seed']}; an answer span is in some "
          f"chunk for {r['answer_in_some_chunk']:.3f} of them; {r['ms_per_query']:.1f} ms per search")
    print(f"{'mode':<8} {'half':<5} {'n':>5} {'R@1':>6} {'R@5':>6} {'R@20':>6} {'MRR':>6}")
    for mode, halves in r["modes"].items():
        for half, m in halves.items():
            print(f"{mode:<8} {half:<5} {m['n']:>5} {m['recall@1']:>6.3f} {m['recall@5']:>6.3f} "
                  f"{m['recall@20']:>6.3f} {m['mrr']:>6.3f}")


def _print_qa(r: dict) -> None:
    for row in r["examples"][:5]:
        print(f"Q: {row['question']}\n   gold: {row['gold'][:120]}\n   answer: {row['answer'][:300]}\n"
              f"   quote: {row['quote'][:300]}\n")
    print(f"{r['questions']} questions: answer contains gold {r['contains_gold']:.3f}, token F1 {r['f1']:.3f}, "
          f"quote shown under it contains gold {r['quote_contains_gold']:.3f}, "
          f"gold in prompt {r['answer_in_prompt']:.3f}, 'not found' {r['not_found']:.3f}; "
          f"{r['retrieve_s_per_question']:.2f} s retrieval + {r['generate_s_per_question']:.1f} s generation "
          f"per question ({r['answer_tokens_per_s']:.1f} answer tokens/s)")


def _print_summary(r: dict) -> None:
    if r["examples"]:
        print(f"first summary: {r['examples'][0]['summary'][:600]}\n")
    print(f"{'system':<10} {'R-1':>6} {'R-2':>6} {'R-L':>6}")
    for name in ("summarize", "lead"):
        m = r[name]
        print(f"{name:<10} {m['rouge1']:>6.3f} {m['rouge2']:>6.3f} {m['rougeL']:>6.3f}")
    for row in r["examples"]:
        if row["error"]:
            print(f"summarize failed (scored as an empty summary): {row['error']}")
    print(f"{r['meetings']} meetings ({r['failed']} failed), {r['summary_words']:.0f} words per summary, "
          f"{r['seconds_per_meeting']:.0f} s per meeting; lead = first {r['lead_words']} words")


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from bot.services import evaluate

    limit = args.limit if args.limit is not None else DEFAULT_LIMITS[args.what]
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, not {limit}")
    if args.what == "retrieval":
        result = asyncio.run(evaluate.retrieval_eval(settings, args.dataset, limit=limit, seed=args.seed, k=args.k))
        _print_retrieval(result)
    elif args.what == "qa":
        result = asyncio.run(evaluate.qa_eval(settings, args.dataset, limit=limit, seed=args.seed))
        _print_qa(result)
    else:
        result = evaluate.summary_eval(settings, args.dataset, limit=limit, seed=args.seed,
                                       lead_words=args.lead_words)
        _print_summary(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure retrieval, answer and summary quality")
    p.add_argument("what", choices=["retrieval", "qa", "summary"])
    p.add_argument("--dataset", required=True, help="SQuAD-format JSON (retrieval, qa) or QMSum JSON lines (summary)")
    p.add_argument("--limit", type=int, help="questions or meetings to sample (default: retrieval all, qa 30, "
                   "summary 5)")
    p.add_argument("--seed", type=int, default=0, help="the sample and the tune/test split of the questions")
    p.add_argument("--k", type=int, default=20, help="retrieval: passages retrieved per question")
    p.add_argument("--lead-words", dest="lead_words", type=int, default=0,
                   help="summary: words in the lead baseline (default: the reference's length)")
    p.add_argument("--out", help="also write every figure and example to this JSON file")
    p.set_defaults(func=_cmd_eval)
