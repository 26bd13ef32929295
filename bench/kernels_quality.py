"""What lm.kernels does to a model's predictions: next-token KL divergence from the dequantized float model
(the GGUF's weights in float32, weights="fp32") with decode rows through lm.kernels (its VNNI kernels where the CPU
has them, and its AVX2 ones) and through torch's kernels, and greedy agreement between lm.kernels and torch's kernels
on the integration tests' prompts.

    python bench/kernels_quality.py --model qwen2.5-coder-0.5b

Teacher-forced: each prompt's tokens go through the quantized model one decode step at a time (the decode-row
path the kernels serve), one sequence per step (`rows 1`) and four at once (`rows 4`); the reference is one full
float32 forward. Greedy: each prompt continued for --new-tokens tokens both ways; where they part, the gap between
the two tokens' logits under torch's kernels and under the float model says whether it was a near-tie.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import env_cache_dir  # noqa: E402
from lm import kernels, quant  # noqa: E402
from lm.engine import Engine, GenerationConfig  # noqa: E402
from lm.load import load_chat_model  # noqa: E402
from lm.model import KVCache  # noqa: E402
from tests.integration.test_generate_real import PROMPTS  # noqa: E402
from tests.integration.test_qwen_real import GPL_8  # noqa: E402

TEXTS = [*PROMPTS, f"Read this and say in one sentence when a license is reinstated.\n\n{GPL_8}",
         "Write a Python function that returns the n-th Fibonacci number, with a docstring."]


def stepwise_logits(model, batch: list[list[int]]) -> torch.Tensor:
    """(B, T, V): every position's logits through one decode step at a time for B sequences of T tokens."""
    ids = torch.tensor(batch)
    cache = KVCache(model.config, batch_size=len(batch), max_len=ids.shape[1])
    with torch.inference_mode():
        return torch.cat([model(ids[:, t:t + 1], cache=cache).float() for t in range(ids.shape[1])], 1)


def mean_kl(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean over positions of KL(ref || got), both (..., V) logits."""
    return F.kl_div(F.log_softmax(got, -1), F.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, default=48, help="teacher-forced positions per prompt")
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    args = ap.parse_args()
    quant.use_kernels(True)
    model, tok = load_chat_model(args.model, env_cache_dir(), weights="int4", max_seq_len=2048)
    ref_model, _ = load_chat_model(args.model, env_cache_dir(), weights="fp32", max_seq_len=2048)
    prompts = [tok.render_chat([{"role": "user", "content": t}])[0] for t in TEXTS]
    forced = [(p + p)[:args.tokens] for p in prompts]  # short prompts repeat: every row has --tokens positions
    with torch.inference_mode():
        ref = torch.stack([ref_model(torch.tensor([ids]))[0].float() for ids in forced])  # (P, T, V)
    summary = {"model": args.model, "positions": len(forced) * args.tokens, "kl_vs_float": {}}
    # lm.kernels' VNNI kernels where the CPU has them (else that side repeats the AVX2 ones), its AVX2 ones, torch's
    for name, on, vnni in (("lm-kernels", True, True), ("lm-kernels-avx2", True, False), ("torch-kernels", False, True)):
        quant.use_kernels(on)
        if on:
            name += "-vnni" if kernels.use_vnni(vnni) else ""
        one = torch.cat([stepwise_logits(model, [ids]) for ids in forced])
        four = torch.cat([stepwise_logits(model, forced[i:i + 4]) for i in range(0, len(forced) - 3, 4)])
        summary["kl_vs_float"][name] = {"rows 1": round(mean_kl(ref, one), 5),
                                        "rows 4": round(mean_kl(ref[:len(four)], four), 5)}
        print(name, summary["kl_vs_float"][name], flush=True)
    kernels.use_vnni(True)
    engine = Engine(model, tok, max_len=2048)
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, ignore_stop_ids=True)
    greedy = []
    for ids in prompts:
        outs = {}
        for on in (True, False):
            quant.use_kernels(on)
            engine.reset()
            outs[on] = engine.generate(ids, cfg).ids
        same = next((i for i, (a, b) in enumerate(zip(outs[True], outs[False], strict=False)) if a != b), None)
        row = {"identical": same is None}
        if same is not None:  # the two tokens' logit gap where they parted, under torch's kernels and in float32
            prefix = torch.tensor([ids + outs[False][:same]])
            a, b = outs[True][same], outs[False][same]
            with torch.inference_mode():
                gaps = [m(prefix)[0, -1].float() for m in (model, ref_model)]
            row |= {"first_difference": same, "gap_torch_kernels": round((gaps[0][b] - gaps[0][a]).item(), 4),
                    "gap_float": round((gaps[1][b] - gaps[1][a]).item(), 4)}
        greedy.append(row)
        print(row, flush=True)
    summary["greedy"] = greedy
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
