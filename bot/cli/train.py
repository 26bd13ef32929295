"""`docent train`: train a model from scratch on a text corpus, or fine-tune one, from the command line.

    docent train scratch corpus.txt --char --steps 2000
    docent train scratch corpus.txt --arch lstm
    docent train lora chats.jsonl --base smollm2-135m --steps 200

Every other `python -m lm.train` flag passes through (`docent train scratch --help` lists them). The result
is a model directory that `docent chat --model DIR` and `docent generate --model DIR` use (an LSTM can
`generate`, not chat).
"""

from __future__ import annotations

import argparse
import time

from bot.config import Settings


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from lm.train import main as train_main

    out = args.out or str(settings.data_dir / "models" / f"{args.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    argv = ["--mode", args.mode, "--data", args.data, "--out", out, *args.rest]
    if args.base:
        argv += ["--base", args.base]
    code = train_main(argv)
    if code == 0:
        print(f"model written to {out}; try: docent generate --raw --model {out} \"Some text\"")
    return code


def register(sub) -> None:
    p = sub.add_parser("train", help="train from scratch or fine-tune (flags of `python -m lm.train` pass through)")
    p.add_argument("mode", choices=["scratch", "full", "lora"])
    p.add_argument("data", help="a text file, or a JSON-lines file of conversations")
    p.add_argument("--base", help="full/lora: hub name, GGUF path or model directory")
    p.add_argument("--out", help="output model directory (default: DATA_DIR/models/MODE-TIME)")
    p.set_defaults(func=_cmd_train, pass_through=True)
