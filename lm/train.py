"""One training loop for three modes: from scratch, full fine-tuning and LoRA; runnable alone or under torchrun.

    python -m lm.train --mode scratch --data corpus.txt --out runs/tiny --char --steps 2000
    python -m lm.train --mode lora --base smollm2-135m --data chats.jsonl --out runs/v7 --steps 300
    torchrun --nproc_per_node 2 -m lm.train --mode full --base runs/tiny --data more.txt --out runs/tiny2

The loop (nanoGPT-style): AdamW with weight decay on 2-D weights only, linear warm-up then cosine (or
constant) learning rate, gradient accumulation, clipping, optional bf16 autocast, periodic evaluation on a
fixed set of held-out batches. Every `--ckpt-interval` steps, on SIGTERM/SIGINT and when `--cancel-file`
appears, the complete state (trainable weights, optimizer, step, RNG of every rank) is written atomically to
OUT/checkpoint.pt; `--resume` continues from it, and because every batch is a function of (seed, rank, step)
a resumed run reproduces the uninterrupted one exactly. At the end OUT becomes a model directory
(lm/checkpoint.py) that lm.load loads for generation.

Metrics go to OUT/metrics.jsonl, one JSON object per log step ({"step", "loss", "lr", "tokens_per_s",
"eta_s"} and "eval_loss" at evaluation steps); the last line, also printed to stdout, is the summary
({"summary": true, "status": "done" | "cancelled", ...}). Under DDP (gloo on CPU, nccl on GPU) every rank
draws its own batches, gradients are averaged, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from lm import checkpoint as ckpt
from lm.data import (
    ChatBatches,
    DataError,
    TextBatches,
    chat_examples,
    read_chat_jsonl,
    split_examples,
    split_tokens,
    tokenize_text,
)
from lm.load import load_model

MEMMAP_CHARS = 16 << 20  # texts larger than this are tokenized into OUT/tokens.bin and memmapped


@dataclass
class TrainConfig:
    mode: str = "scratch"  # scratch | full | lora
    arch: str = "transformer"  # transformer | lstm (scratch only)
    data: str = ""  # a text file, or a JSONL of conversations ({"messages": [...]} per line)
    data_format: str = "auto"  # auto (by suffix .jsonl) | text | chat
    base: str | None = None  # full / lora: hub name, GGUF path or model directory
    cache_dir: str = "~/.cache/docent"  # where a hub name is pulled to (the command line: $DOCENT_CACHE_DIR)
    out_dir: str = "out"
    # tokenizer (scratch)
    char: bool = False  # one token per character instead of a byte-level BPE
    vocab_size: int = 4096  # BPE vocabulary size
    # model (scratch)
    n_layers: int = 4
    n_heads: int = 4
    dim: int = 128
    hidden_dim: int = 0  # SwiGLU width; 0 = 8/3 * dim rounded up to 8: the FLOPs of a 4x GELU MLP (Llama's rule)
    dropout: float = 0.0
    block_size: int = 256  # context length of a training window
    # LoRA
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # optimisation
    steps: int = 1000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    lr_decay_steps: int | None = None  # cosine reaches min_lr here; default: steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = off
    bf16: bool = False  # torch.autocast bf16 (CPU or GPU)
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # 0 = only at the end
    eval_batches: int = 20
    log_interval: int = 10
    ckpt_interval: int = 500  # 0 = only on cancel
    keep_checkpoint: bool = False  # keep OUT/checkpoint.pt after a finished run
    seed: int = 1337
    resume: bool = False
    cancel_file: str | None = None
    threads: int = 0  # torch threads per process; 0 = torch's default
    progress: bool = True
    hash_out: str | None = None  # write each rank's init/final weight hashes here (DDP consistency checks)
    extra_meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.mode in ("scratch", "full", "lora"), f"mode must be scratch, full or lora, not {self.mode!r}"),
            (self.arch in ("transformer", "lstm"), f"arch must be transformer or lstm, not {self.arch!r}"),
            (self.arch == "transformer" or self.mode == "scratch", "--arch lstm only trains from scratch"),
            (self.mode == "scratch" or bool(self.base), f"mode {self.mode} needs --base (hub name, GGUF or model dir)"),
            (self.schedule in ("cosine", "constant"), f"schedule must be cosine or constant, not {self.schedule!r}"),
            (self.data_format in ("auto", "text", "chat"), "data format must be auto, text or chat"),
            (self.steps >= 1 and self.batch_size >= 1 and self.grad_accum >= 1, "steps, batch and grad_accum must be >= 1"),
            (self.lr > 0, "lr must be positive"),
            (self.block_size >= 2, "block size must be >= 2"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


# ------------------------------------------------------------------------------------------- pieces

def swiglu_width(dim: int) -> int:
    """8/3 * dim rounded up to a multiple of 8: three matrices as costly as a 4x two-matrix MLP."""
    return (8 * dim // 3 + 7) // 8 * 8


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over cfg.warmup steps, then cosine down to min_lr at lr_decay_steps (or constant)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    decay = cfg.lr_decay_steps or cfg.steps
    if step >= decay:
        return min_lr
    ratio = (step - cfg.warmup) / max(1, decay - cfg.warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices (embeddings, projections, LoRA factors) decay, norms and biases do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)


def state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def is_chat_data(cfg: TrainConfig) -> bool:
    return cfg.data_format == "chat" or (cfg.data_format == "auto" and cfg.data.endswith(".jsonl"))


def read_training_text(cfg: TrainConfig) -> tuple[str | None, list[list[dict]] | None]:
    path = Path(cfg.data)
    if not path.is_file():
        raise DataError(f"{cfg.data}: no such data file")
    if is_chat_data(cfg):
        return None, read_chat_jsonl(path)
    return path.read_text(encoding="utf-8", errors="replace"), None


def build_scratch(cfg: TrainConfig, text: str | None, conversations: list[list[dict]] | None):
    """A new tokenizer (trained on the data) and a randomly initialised model."""
    from lm.config import ModelConfig
    from lm.lstm import LSTMLM, LSTMConfig
    from lm.model import Transformer
    from lm.tokenizer import Tokenizer

    corpus = [text] if text is not None else [m["content"] for c in conversations or [] for m in c]
    if cfg.char:
        tokenizer = Tokenizer.char(corpus)
    else:
        tokenizer = Tokenizer.train_bpe(corpus, cfg.vocab_size)
    if cfg.arch == "lstm":
        mcfg = LSTMConfig(vocab_size=tokenizer.vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, dropout=cfg.dropout,
                          max_seq_len=cfg.block_size)
        model = LSTMLM(mcfg).init_weights(cfg.seed)
    else:
        mcfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                           n_kv_heads=cfg.n_heads, hidden_dim=cfg.hidden_dim or swiglu_width(cfg.dim),
                           max_seq_len=cfg.block_size, dropout=cfg.dropout, rope_theta=10000.0)
        model = Transformer(mcfg).init_weights(cfg.seed)
    return model, tokenizer


def build_sources(cfg: TrainConfig, tokenizer, text: str | None, conversations, out: Path, rank: int):
    """(train batches, val batches) for this rank."""
    if conversations is not None:
        examples = chat_examples(conversations, tokenizer, cfg.block_size)
        tr, va = split_examples(examples)
        if not va:
            va = tr  # a single conversation: evaluate on what we train on rather than on nothing
        pad = tokenizer.eos_id if tokenizer.eos_id is not None else 0
        return (ChatBatches(tr, cfg.batch_size, cfg.seed, rank, pad),
                ChatBatches(va, cfg.batch_size, cfg.seed + 1, 0, pad))
    assert text is not None
    ids = tokenize_text(text, tokenizer, out / "tokens.bin" if len(text) > MEMMAP_CHARS and rank == 0 else None)
    tr, va = split_tokens(ids)
    return (TextBatches(tr, cfg.block_size, cfg.batch_size, cfg.seed, rank),
            TextBatches(va, cfg.block_size, cfg.batch_size, cfg.seed + 1, 0))


@torch.no_grad()
def evaluate(model: nn.Module, source, n_batches: int, device: torch.device, bf16: bool,
             rank: int = 0, world: int = 1) -> float:
    """Mean loss over the same n_batches held-out batches every time (shared out among the ranks)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(rank, n_batches, world):
        x, y = source.get(i)
        with _autocast(device, bf16):
            total[0] += model(x.to(device), y.to(device)).double()
        total[1] += 1
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


class _Cancel:
    """Set by SIGTERM/SIGINT or by the cancel file appearing; checked once per step."""

    def __init__(self, cancel_file: str | None):
        self.file = Path(cancel_file) if cancel_file else None
        self.flag = False
        self._old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a worker): rely on the cancel file
                pass

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def requested(self) -> bool:
        return self.flag or (self.file is not None and self.file.exists())

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, model: nn.Module | None = None, tokenizer=None,
          on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary. `model`/`tokenizer` may be passed in to skip
    loading cfg.base (a LoRA run wraps the given model in place). `on_step(step)` is called after every
    optimizer step (progress reporting in-process)."""
    rank, world, device = _distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ck_path = out / ckpt.CHECKPOINT
    state = ckpt.load_checkpoint(ck_path) if cfg.resume and ck_path.is_file() else None
    if cfg.resume and state is None and (out / "meta.json").is_file():
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("status") == "done":
            return {"summary": True, "status": "done", "note": "already finished", **meta}

    text, conversations = read_training_text(cfg)
    torch.manual_seed(cfg.seed)
    lora_cfg = None
    if cfg.mode == "scratch":
        if state is not None:  # the tokenizer was trained and saved by the interrupted run: reuse it exactly
            from lm.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_file(out / "tokenizer.json")
            model, _ = ckpt.build_model(state["model_config"])
        else:
            model, tokenizer = build_scratch(cfg, text, conversations)
            if rank == 0:
                ckpt.save_tokenizer(out, tokenizer)
    elif model is None or tokenizer is None:
        model, tokenizer, _ = load_model(cfg.base, Path(cfg.cache_dir).expanduser())
    if cfg.mode != "scratch":
        model.config.dropout = cfg.dropout
        for m in model.modules():
            if hasattr(m, "dropout") and isinstance(m.dropout, float):
                m.dropout = cfg.dropout
        cfg.block_size = min(cfg.block_size, model.config.max_seq_len)
    if cfg.mode == "lora":
        from lm.lora import LoRAConfig, apply_lora

        lora_cfg = LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        apply_lora(model, lora_cfg, seed=cfg.seed)
    model.to(device).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    train_src, val_src = build_sources(cfg, tokenizer, text, conversations, out, rank)

    opt = make_optimizer(model, cfg)
    start_step, tokens_seen, best_val, prev_elapsed = 0, 0, float("inf"), 0.0
    if state is not None:
        if cfg.mode == "lora" or cfg.mode == "full":
            missing = set(trainable) - set(state["model"])
            if missing:
                raise ckpt.CheckpointError(f"{ck_path} does not fit this run: missing {sorted(missing)[:3]}")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        start_step, tokens_seen = state["step"], state["tokens"]
        best_val, prev_elapsed = state.get("best_val", float("inf")), state.get("elapsed", 0.0)
        rngs = state.get("rng") or []
        if len(rngs) == world:
            torch.set_rng_state(rngs[rank])
        else:
            torch.manual_seed(cfg.seed + rank)
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks, as data does

    if cfg.hash_out:
        Path(cfg.hash_out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.hash_out) / f"init.rank{rank}").write_text(state_hash(model))
    raw = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(step: int) -> None:
        rng = torch.get_rng_state()
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank == 0:
            sd = raw.state_dict()
            sd = {k: v for k, v in sd.items() if k in trainable} if cfg.mode == "lora" else ckpt.model_state_dict(raw)
            ckpt.save_checkpoint(ck_path, {
                "step": step, "model": sd, "optimizer": opt.state_dict(), "rng": rngs, "tokens": tokens_seen,
                "best_val": best_val, "elapsed": prev_elapsed + (time.perf_counter() - t0),
                "model_config": asdict(raw.config), "train_config": asdict(cfg)})

    log_f = open(out / "metrics.jsonl", "a") if rank == 0 else None  # noqa: SIM115 (closed in finally)

    def log(rec: dict) -> None:
        if log_f is not None:
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start_step, disable=not cfg.progress or rank != 0, dynamic_ncols=True,
               file=sys.stderr, unit="step")
    cancel = _Cancel(cfg.cancel_file)
    cancel_t = torch.zeros(1, device=device)
    t0 = time.perf_counter()
    train_time, last_loss, eval_loss = 0.0, float("nan"), None
    step, status = start_step, "done"
    win_tokens, win_t = 0, time.perf_counter()
    try:
        while step < cfg.steps:
            if world > 1:  # every rank must stop at the same step, or the next all-reduce would hang
                cancel_t.fill_(float(cancel.requested()))
                dist.all_reduce(cancel_t)
                stop = bool(cancel_t.item() > 0)
            else:
                stop = cancel.requested()
            if stop:
                status = "cancelled"
                break
            ts = time.perf_counter()
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = train_src.get(step, micro)
                x, y = x.to(device), y.to(device)
                sync = micro == cfg.grad_accum - 1 or world == 1
                with (contextlib.nullcontext() if sync else model.no_sync()), _autocast(device, cfg.bf16):
                    loss = model(x, y) / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
                win_tokens += x.numel() * world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable.values(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += cfg.grad_accum * cfg.batch_size * cfg.block_size * world
            train_time += time.perf_counter() - ts
            last_loss = loss_sum
            bar.update(1)
            do_eval = step == cfg.steps or (cfg.eval_interval and step % cfg.eval_interval == 0)
            if do_eval:
                eval_loss = evaluate(raw, val_src, cfg.eval_batches, device, cfg.bf16, rank, world)
                best_val = min(best_val, eval_loss)
            if do_eval or step % cfg.log_interval == 0:
                now = time.perf_counter()
                tps = win_tokens / max(now - win_t, 1e-9)
                win_tokens, win_t = 0, now
                rec = {"step": step, "loss": round(last_loss, 5), "lr": lr, "tokens_per_s": round(tps, 1),
                       "eta_s": round(train_time / (step - start_step) * (cfg.steps - step), 1)}
                if do_eval:
                    rec["eval_loss"] = round(eval_loss, 5)
                log(rec)
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tps:.0f}",
                                **({"val": f"{eval_loss:.4f}"} if eval_loss is not None else {}))
            if cfg.ckpt_interval and step % cfg.ckpt_interval == 0 and step < cfg.steps:
                save_state(step)
            if on_step is not None:
                on_step(step)
        if status == "cancelled":
            save_state(step)
        elif cfg.keep_checkpoint:
            save_state(step)
        if cfg.hash_out:
            (Path(cfg.hash_out) / f"final.rank{rank}").write_text(state_hash(raw))
        elapsed = prev_elapsed + time.perf_counter() - t0
        steps_run = step - start_step
        summary = {"summary": True, "status": status, "mode": cfg.mode, "arch": cfg.arch, "step": step,
                   "steps": cfg.steps, "train_loss": round(last_loss, 5),
                   "val_loss": round(eval_loss, 5) if eval_loss is not None else None,
                   "best_val_loss": round(best_val, 5) if best_val < float("inf") else None,
                   "tokens": tokens_seen, "seconds": round(elapsed, 2),
                   "ms_per_step": round(1000 * train_time / steps_run, 2) if steps_run else None,
                   "params": sum(p.numel() for p in raw.parameters()), "trainable_params":
                   sum(p.numel() for p in trainable.values()), "world_size": world, "out_dir": str(out)}
        if rank == 0 and status == "done":
            meta = {**summary, "base": cfg.base, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "train_config": asdict(cfg), **cfg.extra_meta}
            meta.pop("summary")
            raw.eval()
            if cfg.mode == "lora":
                ckpt.save_lora_dir(out, raw, lora_cfg, str(cfg.base), tokenizer, meta)
            else:
                ckpt.save_model_dir(out, raw, raw.config, tokenizer, meta)
            if not cfg.keep_checkpoint:
                ck_path.unlink(missing_ok=True)
        log(summary)
        return summary
    finally:
        bar.close()
        cancel.restore()
        if log_f is not None:
            log_f.close()


# ------------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m lm.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = TrainConfig()
    p.add_argument("--out", dest="out_dir", default=defaults.out_dir, help="output / model directory")
    p.add_argument("--batch", dest="batch_size", type=int, default=defaults.batch_size, help="batch size per rank")
    # the bot starts this command with DOCENT_CACHE_DIR set to its own cache (bot/services/training/runner.py)
    p.add_argument("--cache-dir", default=os.environ.get("DOCENT_CACHE_DIR", defaults.cache_dir),
                   help="where a hub name given as --base is pulled to")
    skip = {"out_dir", "batch_size", "cache_dir", "extra_meta"}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name in ("min_lr",):
            p.add_argument(flag, type=float, default=default)
        elif f.name in ("lr_decay_steps",):
            p.add_argument(flag, type=int, default=default)
        elif default is None:
            p.add_argument(flag, type=str, default=default)
        else:
            p.add_argument(flag, type=type(default), default=default)
    args = p.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = train(cfg)
    except (DataError, ckpt.CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary), flush=True)
    return 0 if summary["status"] == "done" else 3


if __name__ == "__main__":
    raise SystemExit(main())
