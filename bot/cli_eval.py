"""`docent eval retrieval|qa|summary`: quality figures on SQuAD-style and QMSum-style data sets."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure retrieval, answer and summary quality")
    p.add_argument("what", choices=["retrieval", "qa", "summary"])
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=lambda args, settings: print("not implemented yet") or 2)
