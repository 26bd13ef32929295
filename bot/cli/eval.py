"""`docent eval retrieval|qa|summary|chat`: quality figures on SQuAD-style, QMSum-style and document-folder data
sets, and on the chat-quality set.

The work is in bot.eval.retrieval (retrieval), bot.eval.qa (qa), bot.eval.summary (summary) and bot.eval.chat_quality
(chat); this file
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
    from bot.eval.metrics import RIGHT_MAX_WORDS

    for row in [x for x in r["examples"] if x["answerable"]][:4] + [x for x in r["examples"] if not x["answerable"]][:2]:
        gold = "; ".join(g[:80] for g in row["gold"]) or "-"
        kind = "gold" if row["answerable"] else "unanswerable; plausible"
        print(f"Q: {row['question']}\n   {kind}: {gold}\n   reply [{row['path'] or 'not found'}]: "
              f"{row['reply'][:300]}\n")
    print(f"{r['dataset']}, seed {r['seed']}, model {r['model']}, writing {r['writing']}")
    print(f"{'half':<5} {'n':>4} {'right':>6} {'contains':>8} {'F1':>6} {'words':>5} {'quote':>6} {'in ev.':>6} "
          f"{'in psg':>6} {'miss':>6} {'unans':>4} {'said nf':>7} {'unsupp':>6} {'loops':>5} {'s/q':>5} {'reject':>6}  paths")
    for half, m in r["halves"].items():
        nf = "-" if m["unanswerable_not_found"] is None else f"{m['unanswerable_not_found']:.3f}"
        print(f"{half:<5} {m['answerable']:>4} {m['right']:>6.3f} {m['contains_gold']:>8.3f} {m['f1']:>6.3f} "
              f"{m['answer_words']:>5.1f} {m['quote_contains_gold']:>6.3f} {m['gold_in_evidence']:>6.3f} "
              f"{m['gold_in_passages']:>6.3f} "
              f"{m['answerable_not_found']:>6.3f} {m['unanswerable']:>4} {nf:>7} {m['unsupported_rate']:>6.3f} "
              f"{m['loops']:>5} {m['seconds_per_question']:>5.1f} {m['written_rejected']:>6.3f}  {m['paths']}")
    kinds = sorted({x["kind"] for x in r["examples"] if x["answerable"] and x["kind"]})
    if kinds:
        print("right by kind (all halves): " + ", ".join(
            f"{k} {sum(x['right'] for x in r['examples'] if x['answerable'] and x['kind'] == k)}/"
            f"{sum(1 for x in r['examples'] if x['answerable'] and x['kind'] == k)}" for k in kinds))
    print(f"right: the answer mentions a gold answer in at most {RIGHT_MAX_WORDS} words; words: per answer given; "
          "contains/F1/quote/in ev./in psg/miss: answerable questions (the answer, the sentence quoted under it, "
          "the evidence the model read and the retrieved passages contain a gold answer; miss = said not found); "
          "said nf: unanswerable questions answered 'not found'; unsupp: answers shown with a name, number or quoted term "
          "the evidence lacks; words: words per answer shown; reject: written answers the support check refused; "
          "paths: who answered (model = written, copy = a copied span)")


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


def _print_chat(r: dict) -> None:
    for row in [x for x in r["examples"] if not x["right"]][:6]:
        print(f"{row['id']}: {' / '.join(row['turns'])}\n   gold: {'; '.join(row['gold']) or '(says it cannot know)'}"
              f"\n   reply: {row['replies'][-1][:300]}\n")
    print(f"{r['dataset']}, model {r['model']}, seed {r['seed']}, replies capped at {r['max_new_tokens']} tokens, "
          f"temperature {r['temperature']}; {r['seconds']:.0f} s ({r['tokens_per_second']:.1f} tokens/s over all "
          f"conversations side by side; model loaded in {r['load_seconds']:.1f} s)")
    print(f"{'group':<11} {'n':>4} {'right':>6} {'mentions':>8} {'words':>6} {'capped':>6} {'loops':>5}")
    for name, m in [*r["halves"].items(), *r["kinds"].items()]:
        print(f"{name:<11} {m['n']:>4} {m['right']:>6.3f} {m['mentions']:>8.3f} {m['words']:>6.1f} "
              f"{m['capped']:>6.3f} {m['loops']:>5}")
    print("right: the last reply mentions a gold answer (refuse: says it cannot know) within the item's word cap; "
          "mentions: anywhere, however long; capped: replies cut by the token cap")


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    if args.model:
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, name=args.model))
    if args.what == "chat":
        from bot.eval.chat_quality import chat_eval

        result = chat_eval(settings, args.dataset, limit=args.limit, seed=args.seed, max_new_tokens=args.max_new_tokens)
        _print_chat(result)
        return _write(args, result)
    if not args.dataset:
        raise SystemExit(f"docent eval {args.what}: --dataset is required")
    default = None if Path(args.dataset).is_dir() and args.what != "summary" else DEFAULT_LIMITS[args.what]
    limit = args.limit if args.limit is not None else default  # a dev set folder: every question
    if args.what == "retrieval":
        from bot.eval.retrieval import retrieval_eval

        result = asyncio.run(retrieval_eval(settings, args.dataset, limit=limit, seed=args.seed, k=args.k))
        _print_retrieval(result)
    elif args.what == "qa":
        from bot.eval.qa import qa_eval

        result = asyncio.run(qa_eval(settings, args.dataset, limit=limit, seed=args.seed,
                                     writing={"extract": "copy"}.get(args.writing, args.writing),
                                     half={"tune": 0, "held-out": 1}.get(args.half)))
        _print_qa(result)
    else:
        from bot.eval.summary import summary_eval

        writing = {"copy": "extract"}.get(args.writing, args.writing)
        result = summary_eval(settings, args.dataset, limit=limit, seed=args.seed, lead_words=args.lead_words,
                              rewrite=args.rewrite, writing=writing, sentences=args.sentences)
        _print_summary(result)
    return _write(args, result)


def _write(args: argparse.Namespace, result: dict) -> int:
    """--out gets every figure and example; stdout ends with one JSON line of the figures."""
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure retrieval, answer, summary and chat quality")
    p.add_argument("what", choices=["retrieval", "qa", "summary", "chat"])
    p.add_argument("--dataset", help="SQuAD-format JSON or a folder of real documents with questions.json such as "
                   "tests/data/realdocs (retrieval, qa); QMSum JSON lines or a folder with documents.txt and "
                   "references.txt, one document a line (summary); a chat set (chat; default "
                   "tests/data/chat_quality.json)")
    p.add_argument("--model", help="the chat model to measure: a hub name or a .gguf path (default: settings)")
    p.add_argument("--limit", type=bounded(int, 1), help="questions or documents to sample (default: retrieval all, qa 30 "
                   "(every question of a dev set folder), summary all)")
    p.add_argument("--seed", type=int, default=0, help="the sample and the tune/test split of the questions")
    p.add_argument("--half", choices=["tune", "held-out"],
                   help="qa: ask only the questions of this half of the tune/held-out split (default: both)")
    p.add_argument("--k", type=bounded(int, 1), default=20, help="retrieval: passages retrieved per question")
    p.add_argument("--lead-words", dest="lead_words", type=bounded(int, 0), default=0,
                   help="summary, QMSum: words in the lead baseline (default: the reference's length)")
    p.add_argument("--rewrite", action="store_true",
                   help="summary: also let the chat model shorten the extracted sentences (measured, off in the bot)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=bounded(int, 1),
                   help="chat: the token cap on each reply (default: the set's)")
    p.add_argument("--writing", choices=["auto", "model", "copy", "extract"],
                   help="who words the answer or summary: qa auto|model|copy (default: [documents] writing), "
                   "summary auto|model|extract (default: [documents] summary_writing); copy and extract both mean "
                   "that the model writes nothing")
    p.add_argument("--sentences", type=bounded(int, 1),
                   help="summary: sentences of a written summary (default: by the document's length, as in the bot)")
    p.add_argument("--out", help="also write every figure and example to this JSON file")
    p.set_defaults(func=_cmd_eval)
