"""LoRA fine-tuning of a hub model (default: the default chat model) on 90 COVID-QA papers, perplexity on 8 held-out papers before and after.

    python -m bench.finetune                       # 150 steps, batch 1 x 256 tokens, bf16 autocast
    python -m bench.finetune --steps 20 --eval-windows 1     # a quick check that it all runs

The base model (`--base`, a hub name) is its GGUF, dequantized to fp32 (lm.gguf.read_model), with its
own tokenizer (Tokenizer.from_gguf). Papers 0-89 (data[i].paragraphs[0].context of covidqa.json) are the
training text; papers 90-97 are held out. Perplexity is exp(mean next-token loss) over the first
`--eval-windows` non-overlapping windows of `--block` tokens of each held-out paper, computed in fp32 with
the same windows before and after training. LoRA (rank 8, alpha 16) on wqkv, wo, w13, w2 trains through
lm.train with the base frozen. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from bot.config import ModelSettings, env_cache_dir
from lm import hub
from lm.gguf import read_model
from lm.tokenizer import Tokenizer
from lm.train import TrainConfig, train

COVIDQA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "covidqa.json"  # ../shared beside the checkout


def papers() -> list[str]:
    data = json.loads(COVIDQA.read_text())["data"]
    return [d["paragraphs"][0]["context"] for d in data]


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch: int = 4) -> float:
    """windows: (N, T+1) token ids; exp of the mean next-token loss over all N*T predictions."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        total += model(w[:, :-1], w[:, 1:]).item() * w[:, 1:].numel()
    return math.exp(total / windows[:, 1:].numel())


def eval_windows(tok: Tokenizer, texts: list[str], block: int, per_text: int) -> torch.Tensor:
    rows = []
    for text in texts:
        ids = tok.encode(text)
        for w in range(per_text):
            chunk = ids[w * block: w * block + block + 1]
            if len(chunk) == block + 1:
                rows.append(chunk)
    return torch.tensor(rows, dtype=torch.long)  # (N, block + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=ModelSettings().name, help="hub name of the base model")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--block", type=int, default=256, help="context length of training and evaluation windows")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--eval-windows", type=int, default=2, help="evaluation windows per held-out paper")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32 instead of bf16 autocast")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    texts = papers()
    train_texts, test_texts = texts[:90], texts[90:98]
    t0 = time.perf_counter()
    path = hub.pull(args.base, env_cache_dir())
    model, g = read_model(path, max_seq_len=2048)
    tok = Tokenizer.from_gguf(g.metadata)
    load_s = time.perf_counter() - t0

    windows = eval_windows(tok, test_texts, args.block, args.eval_windows)
    t = time.perf_counter()
    ppl_before = perplexity(model, windows)
    eval_s = time.perf_counter() - t
    print(f"held-out: {len(windows)} windows x {args.block} tokens; perplexity before {ppl_before:.3f} "
          f"({eval_s:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "covid_train.txt"
        data.write_text("\n\n".join(train_texts))
        cfg = TrainConfig(mode="lora", base=args.base, data=str(data), out_dir=str(Path(tmp) / "lora"),
                          block_size=args.block, batch_size=args.batch, steps=args.steps, lr=args.lr,
                          min_lr=args.lr / 10, warmup=max(1, args.steps // 20), weight_decay=0.0,
                          lora_rank=args.rank, lora_alpha=args.alpha, bf16=args.bf16, eval_interval=0,
                          eval_batches=2, log_interval=10, ckpt_interval=0, progress=args.progress, seed=0,
                          threads=args.threads)
        t = time.perf_counter()
        summary = train(cfg, model=model, tokenizer=tok)
        train_s = time.perf_counter() - t
        if summary["status"] != "done":
            raise SystemExit(f"training ended {summary['status']} at step {summary['step']} of {args.steps}")
        adapter_bytes = (Path(tmp) / "lora" / "lora.safetensors").stat().st_size

    ppl_after = perplexity(model, windows)
    reduction = 1.0 - ppl_after / ppl_before
    print(f"\n{'':<24}{'perplexity':>12}")
    print(f"{args.base + ' (base)':<24}{ppl_before:>12.3f}")
    print(f"{'+ LoRA, ' + str(args.steps) + ' steps':<24}{ppl_after:>12.3f}")
    print(f"reduction {100 * reduction:.1f}%; training {train_s:.0f} s ({summary['ms_per_step'] / 1000:.2f} s/step, "
          f"{summary['trainable_params']:,} trainable parameters, adapter {adapter_bytes / 1e6:.1f} MB)")
    print(json.dumps({"bench": "finetune", "base": args.base, "steps": args.steps, "batch": args.batch, "block": args.block,
                      "bf16": args.bf16, "eval_tokens": int(windows[:, 1:].numel()),
                      "ppl_before": round(ppl_before, 4), "ppl_after": round(ppl_after, 4),
                      "reduction": round(reduction, 4), "train_s": round(train_s, 1),
                      "s_per_step": round(summary["ms_per_step"] / 1000, 3), "load_s": round(load_s, 1),
                      "eval_s": round(eval_s, 1), "trainable_params": summary["trainable_params"],
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
