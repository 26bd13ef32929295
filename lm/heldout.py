"""A model's loss on the held-out batches `lm.train` evaluates on, measured the way it measures them: the same
split of a chat data file, the same seeded batches. A run's "before" (the model serving now) and lm.train's
final val_loss (the new version) then compare like for like.

    python -m lm.heldout --model runs/v7 --data runs/8/data.jsonl --block-size 384 --batch 4 --out before.json

Prints (and with --out, writes atomically) {"heldout_loss": ..., "model": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def heldout_loss(model: str, data: Path, block_size: int, batch_size: int, eval_batches: int, seed: int,
                 threads: int = 0, cache_dir: str | None = None) -> float:
    """`model`'s loss on the held-out batches lm.train evaluates on for this data file and these settings
    (same split, same seeded batches), so "before" and lm.train's final val_loss compare like for like.
    `cache_dir`: where a hub name is pulled to (lm.train's default when None)."""
    import torch

    from lm.data import read_chat_jsonl
    from lm.load import load_model
    from lm.train import TrainConfig, build_sources, evaluate

    if threads:
        torch.set_num_threads(threads)
    cache_dir = cache_dir or TrainConfig().cache_dir
    net, tokenizer, _ = load_model(model, Path(cache_dir).expanduser())
    cfg = TrainConfig(mode="lora", base=model, data=str(data), cache_dir=cache_dir, batch_size=batch_size, seed=seed,
                      eval_batches=eval_batches, block_size=min(block_size, net.config.max_seq_len))
    _, val = build_sources(cfg, tokenizer, None, read_chat_jsonl(Path(data)), Path(data).parent, 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return evaluate(net.to(device), val, eval_batches, device, False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.heldout",
                                description="a model's held-out loss on a chat data file, as lm.train measures it")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--block-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0)
    # the bot starts this command with DOCENT_CACHE_DIR set to its own cache (bot/services/training/runner.py)
    p.add_argument("--cache-dir", default=os.environ.get("DOCENT_CACHE_DIR"),
                   help="where a hub name given as --model is pulled to")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    loss = heldout_loss(args.model, args.data, args.block_size, args.batch, args.eval_batches, args.seed,
                        args.threads, args.cache_dir)
    text = json.dumps({"heldout_loss": loss, "model": args.model})
    if args.out:
        from lm.checkpoint import atomic_write_text

        atomic_write_text(args.out, text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
