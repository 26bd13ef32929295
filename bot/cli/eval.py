"""`docent eval retrieval|qa|summary`: quality figures on SQuAD-style, QMSum-style and document-folder data sets.

The work is in bot.eval.retrieval (retrieval), bot.eval.qa (qa) and bot.eval.summary (summary); this file
parses the arguments and prints a table, then ONE JSON line with the figures (per-example rows go to
--out, not to the JSON line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path

from bot.cli.args import bounded
from bot.config import Settings

DEFAULT_LIMITS = {"retrieval": None, "qa": 30, "summary": None}  # None = every question / document


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
    for row in [x for x in r["examples"] if x["answerable"]][:4] + [x for x in r["examples"] if not x["answerable"]][:2]:
        gold = "; ".join(g[:80] for g in row["gold"]) or "-"
        kind = "gold" if row["answerable"] else "unanswerable; plausible"
        print(f"Q: {row['question']}\n   {kind}: {gold}\n   reply: {row['reply'][:300]}\n")
    print(f"{r['dataset']}, seed {r['seed']}")
    print(f"{'half':<5} {'n':>4} {'contains':>8} {'F1':>6} {'quote':>6} {'in ev.':>6} {'in psg':>6} {'miss':>6} "
          f"{'unans':>4} {'said nf':>7} {'unsupp':>6} {'loops':>5} {'s/q':>5}")
    for half, m in r["halves"].items():
        nf = "-" if m["unanswerable_not_found"] is None else f"{m['unanswerable_not_found']:.3f}"
        print(f"{half:<5} {m['answerable']:>4} {m['contains_gold']:>8.3f} {m['f1']:>6.3f} "
              f"{m['quote_contains_gold']:>6.3f} {m['gold_in_evidence']:>6.3f} {m['gold_in_passages']:>6.3f} "
              f"{m['answerable_not_found']:>6.3f} {m['unanswerable']:>4} {nf:>7} {m['unsupported_rate']:>6.3f} "
              f"{m['loops']:>5} {m['seconds_per_question']:>5.1f}")
    print("contains/F1/quote/in ev./in psg/miss: answerable questions (the answer, the sentence quoted under it, "
          "the evidence the model read and the retrieved passages contain a gold answer; miss = said not found); "
          "said nf: unanswerable questions answered 'not found'; unsupp: answers with words the evidence lacks")


def _print_summary(r: dict) -> None:
    for row in r["examples"][:2]:
        print(f"summary: {row['summary'][:600]}\n   reference: {row['reference'][:300]}\n")
    for row in r["examples"]:
        if row["error"]:
            print(f"{row['id']}: not summarized (scored as an empty summary): {row['error']}")
    print(f"{'system':<22} {'half':<5} {'n':>4} {'R-1':>6} {'R-2':>6} {'R-Lsum':>6} {'unsupp.':>8} {'cover':>6} "
          f"{'words':>6}")
    for name, halves in r["systems"].items():
        for half, m in halves.items():
            print(f"{name:<22} {half:<5} {m['n']:>4} {100 * m['rouge1']:>6.2f} {100 * m['rouge2']:>6.2f} "
                  f"{100 * m['rougeLsum']:>6.2f} {m['unsupported_rate']:>8.3f} {m['coverage']:>6.2f} "
                  f"{m['words']:>6.0f}")
    how = (f"written by {r['model']} ({r['sections_per_document']:.1f} sections per document; "
           f"{r['replaced_per_document']:.2f} sentences replaced and {r['dropped_per_document']:.2f} dropped by the "
           "check per document)" if r["written"] else "extracted")
    print(f"summarize: {how}")
    lead = f"; lead = first {r['lead_words']} words" if r["lead_words"] else ""
    print(f"{r['documents']} documents ({r['failed']} failed) of {r['source_words']:.0f} words on average, seed "
          f"{r['seed']}: {r['seconds_per_document']:.2f} s per document to summarize (+ "
          f"{r['parse_seconds_per_document']:.2f} s to parse){lead}; ROUGE: {r['rouge']}"
          + (f"; {r['rewritten_per_document']:.1f} sentences rewritten per document" if r["rewrite"] else ""))


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    limit = args.limit if args.limit is not None else DEFAULT_LIMITS[args.what]
    if args.what == "retrieval":
        from bot.eval.retrieval import retrieval_eval

        result = asyncio.run(retrieval_eval(settings, args.dataset, limit=limit, seed=args.seed, k=args.k))
        _print_retrieval(result)
    elif args.what == "qa":
        from bot.eval.qa import qa_eval

        result = asyncio.run(qa_eval(settings, args.dataset, limit=limit, seed=args.seed))
        _print_qa(result)
    else:
        from bot.eval.summary import summary_eval

        if args.model:  # loaded in place of the configured model
            settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, name=args.model))
        result = summary_eval(settings, args.dataset, limit=limit, seed=args.seed, lead_words=args.lead_words,
                              rewrite=args.rewrite, writing=args.writing, sentences=args.sentences)
        _print_summary(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure retrieval, answer and summary quality")
    p.add_argument("what", choices=["retrieval", "qa", "summary"])
    p.add_argument("--dataset", required=True, help="SQuAD-format JSON (retrieval, qa); QMSum JSON lines or a "
                   "folder with documents.txt and references.txt, one document a line (summary)")
    p.add_argument("--limit", type=bounded(int, 1), help="questions or documents to sample (default: retrieval all, qa 30, "
                   "summary all)")
    p.add_argument("--seed", type=int, default=0, help="the sample and the tune/test split of the questions")
    p.add_argument("--k", type=bounded(int, 1), default=20, help="retrieval: passages retrieved per question")
    p.add_argument("--lead-words", dest="lead_words", type=bounded(int, 0), default=0,
                   help="summary, QMSum: words in the lead baseline (default: the reference's length)")
    p.add_argument("--rewrite", action="store_true",
                   help="summary: also let the chat model shorten the extracted sentences (measured, off in the bot)")
    p.add_argument("--model", help="summary: the chat model that writes (a hub name or a path; default: [model] name)")
    p.add_argument("--writing", choices=["auto", "model", "extract"],
                   help="summary: who writes the summary (default: [documents] summary_writing)")
    p.add_argument("--sentences", type=bounded(int, 1),
                   help="summary: sentences of a written summary (default: by the document's length, as in the bot)")
    p.add_argument("--out", help="also write every figure and example to this JSON file")
    p.set_defaults(func=_cmd_eval)
