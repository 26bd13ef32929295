"""Training from scratch: nanoGPT's Tiny Shakespeare CPU run, through lm.train.

    python -m bench.train_scratch                 # Transformer: val loss after 2,000 iterations, ms/iteration
    python -m bench.train_scratch --arch lstm     # + an LSTM of about the same size, val losses side by side
    python -m bench.train_scratch --steps 200     # a quick look

The configuration is nanoGPT's `shakespeare_char` CPU command: characters, 4 layers, 4 heads, 128 wide,
context 64, batch 12, 2,000 iterations, no dropout, 90/10 split, AdamW lr 1e-3 -> 1e-4 (cosine, 100 warm-up
steps, beta2 0.99, weight decay 0.1), clip 1.0, validation loss as the mean of 20 batches. nanoGPT reaches
val loss 1.886 there at ~60 ms/iteration.

Since absolute timings on a shared machine mean little, the speed claim is a ratio: before training, our
training step and a peer step are timed in interleaved rounds on the same batches, in this process. The peer
is nanoGPT's GPT as in its model.py (LayerNorm without bias, GELU MLP 4x, learned positions, tied head,
SDPA attention), reproduced below. Ours in fp32 and in bf16 autocast are both timed. Final JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm.train import TrainConfig, make_optimizer, swiglu_width, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"  # ../shared beside the checkout
NANOGPT_VAL_LOSS, NANOGPT_MS = 1.886, 60.0


class _PeerBlock(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    """nanoGPT's GPT at the shakespeare_char configuration (the speed peer)."""

    def __init__(self, vocab: int, block: int, d: int = 128, layers: int = 4, heads: int = 4):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.h = nn.ModuleList(_PeerBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for n, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers) if n.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.h:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


def speed_ratio(cfg: TrainConfig, vocab: int, rounds: int, per_round: int = 10) -> dict[str, float]:
    """ms per training step of ours (fp32, bf16) and the peer, timed in interleaved rounds on the same batches."""
    from lm.config import ModelConfig
    from lm.model import Transformer

    mcfg = ModelConfig(vocab_size=vocab, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       n_kv_heads=cfg.n_heads, hidden_dim=cfg.hidden_dim or swiglu_width(cfg.dim), max_seq_len=cfg.block_size)
    contestants = {
        "ours_fp32": (Transformer(mcfg).init_weights(0), False),
        "ours_bf16": (Transformer(mcfg).init_weights(0), True),
        "nanogpt_fp32": (NanoGPT(vocab, cfg.block_size, cfg.dim, cfg.n_layers, cfg.n_heads), False),
    }
    opts = {k: make_optimizer(m, cfg) for k, (m, _) in contestants.items()}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (cfg.batch_size, cfg.block_size + 1), generator=gen) for _ in range(per_round)]
    spent = dict.fromkeys(contestants, 0.0)
    for r in range(rounds + 1):  # round 0 warms up and is not counted
        for name, (model, bf16) in contestants.items():
            t = time.perf_counter()
            for b in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(b[:, :-1], b[:, 1:])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
            if r:
                spent[name] += time.perf_counter() - t
    return {k: 1000 * v / (rounds * per_round) for k, v in spent.items()}


def run(cfg: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out_dir = str(Path(tmp) / cfg.arch)
        t = time.perf_counter()
        s = train(cfg)
        s["wall_s"] = round(time.perf_counter() - t, 1)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=["transformer", "lstm"], default="transformer",
                    help="lstm: also train an LSTM of about the same size and compare")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden-dim", type=int, default=344,
                    help="SwiGLU width: 344 ~ 2/3 x 4 x 128 gives the FLOPs of nanoGPT's 4x GELU MLP; 512 = 4x")
    ap.add_argument("--bf16", action="store_true", help="train under bf16 autocast")
    ap.add_argument("--speed-rounds", type=int, default=3, help="interleaved timing rounds (0 = skip)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = dict(mode="scratch", data=str(DATA), char=True, n_layers=4, n_heads=4, dim=128, hidden_dim=args.hidden_dim,
                block_size=64, batch_size=12, steps=args.steps, lr=1e-3, min_lr=1e-4, warmup=100,
                lr_decay_steps=args.steps, beta2=0.99, grad_clip=1.0, weight_decay=0.1, dropout=0.0,
                eval_interval=500, eval_batches=20, ckpt_interval=0, bf16=args.bf16, progress=args.progress,
                seed=1337, threads=args.threads)
    result: dict = {"bench": "train_scratch", "steps": args.steps, "threads": torch.get_num_threads()}

    if args.speed_rounds:
        speed = speed_ratio(TrainConfig(**base), vocab=69, rounds=args.speed_rounds)
        print(f"{'interleaved step timing':<28}{'ms/iter':>10}", flush=True)
        for k, v in speed.items():
            print(f"  {k:<26}{v:>10.1f}")
        result["speed_ms"] = {k: round(v, 2) for k, v in speed.items()}
        result["ours_over_nanogpt"] = round(speed["ours_bf16" if args.bf16 else "ours_fp32"] / speed["nanogpt_fp32"], 3)
        result["bf16_over_fp32"] = round(speed["ours_bf16"] / speed["ours_fp32"], 3)

    tr = run(TrainConfig(**base))
    result["transformer"] = {k: tr[k] for k in ("val_loss", "train_loss", "ms_per_step", "params", "seconds", "wall_s")}
    rows = [("transformer (ours)", tr["params"], tr["val_loss"], tr["ms_per_step"])]
    if args.arch == "lstm":
        # 2 x 256 LSTM: 16 * 256^2 = 1.05M recurrent weights, as the Transformer's 4 x 262k blocks
        ls = run(TrainConfig(**{**base, "arch": "lstm", "n_layers": 2, "dim": 256, "lr": 2e-3, "min_lr": 2e-4}))
        result["lstm"] = {k: ls[k] for k in ("val_loss", "train_loss", "ms_per_step", "params", "seconds", "wall_s")}
        rows.append(("lstm 2x256", ls["params"], ls["val_loss"], ls["ms_per_step"]))
    rows.append(("nanoGPT (reference)", None, NANOGPT_VAL_LOSS, NANOGPT_MS))

    print(f"\n{'model':<22}{'params':>10}{'val loss @' + str(args.steps):>16}{'ms/iter':>10}")
    for name, n, vl, ms in rows:
        print(f"{name:<22}{(f'{n:,}' if n else '-'):>10}{vl:>16.4f}{ms:>10.1f}")
    result["goal_val_loss_met"] = tr["val_loss"] <= 1.88 if args.steps == 2000 else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
