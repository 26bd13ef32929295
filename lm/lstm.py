"""The classic char-rnn language model (embedding -> multi-layer LSTM -> linear softmax head) and a sampler.

`LSTMLM.forward(idx, targets=None)` has the Transformer's contract: the mean cross-entropy (targets of -100
ignored) when `targets` are given, logits (B, T, V) otherwise, so `lm.train` trains either with one loop
(`--arch lstm`). The LSTM carries its own recurrent state instead of a KV cache, so it has its own generation
loop; `sample_next` picks each step's tokens with the engine's sampler (lm.engine.sample_rows).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm.engine import GenerationConfig, sample_rows


@dataclass
class LSTMConfig:
    arch: str = "lstm"  # lets config.json say which model class to build
    vocab_size: int = 65
    dim: int = 256  # embedding and hidden width
    n_layers: int = 2
    dropout: float = 0.0  # between LSTM layers, training only
    max_seq_len: int = 256  # the training window; generation itself is not limited by it

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: Path) -> LSTMConfig:
        return cls(**json.loads(Path(path).read_text()))


State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layers, B, dim)


class LSTMLM(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.lstm = nn.LSTM(config.dim, config.dim, num_layers=config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.head = nn.Linear(config.dim, config.vocab_size)

    def init_weights(self, seed: int | None = None) -> LSTMLM:
        """Uniform(-1/sqrt(dim), 1/sqrt(dim)) like torch's default, but reproducible from a seed."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        bound = self.config.dim ** -0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("embed"):
                    p.normal_(0.0, 1.0, generator=gen)
                else:
                    p.uniform_(-bound, bound, generator=gen)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                state: State | None = None, return_state: bool = False):
        """idx: (B, T). Loss when `targets` are given; logits (B, T, V) otherwise (and the new state on request)."""
        x = self.embed(idx)  # (B, T, C)
        y, state = self.lstm(x, state)  # (B, T, C)
        logits = self.head(y)  # (B, T, V)
        if targets is not None:
            return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return (logits, state) if return_state else logits

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None,
                 stop_id: int | None = None) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens; returns (B, T + n). The prompt is read once, then one
        token per step through the recurrent state."""
        was_training = self.training
        self.eval()
        logits, state = self(idx, state=None, return_state=True)
        out = [idx]
        for _ in range(max_new_tokens):
            nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B, 1)
            out.append(nxt)
            if stop_id is not None and bool((nxt == stop_id).all()):
                break
            logits, state = self(nxt, state=state, return_state=True)
        self.train(was_training)
        return torch.cat(out, dim=1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from logits (B, V) -> (B, 1) with lm.engine's sampler, the rows drawn one after another
    from `generator`. temperature 0 is greedy; top-k then top-p (nucleus) filtering keep the k most likely
    tokens / the smallest set whose probability reaches p (None or 0: no filter)."""
    cfg = GenerationConfig(temperature=max(temperature, 0.0), top_k=top_k or 0, top_p=top_p or 1.0)
    rows = range(logits.size(0))
    picked = sample_rows(logits.float(), rows, [cfg] * len(rows), [generator] * len(rows))
    return torch.tensor(picked, device=logits.device).unsqueeze(1)
