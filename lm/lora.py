"""LoRA: low-rank adapters on a frozen base model (Hu et al., 2021).

Each targeted nn.Linear W (out, in) becomes W x + (alpha / r) * B A dropout(x), with A (r, in) random and
B (out, r) zero, so a fresh adapter leaves the model's outputs unchanged. Only A and B are trained and
saved; `merge_lora` folds them into W for inference so a fine-tuned model costs nothing extra to run.
Default targets are the Transformer's fused projections: attention.wqkv, attention.wo, feed_forward.w13,
feed_forward.w2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

DEFAULT_TARGETS = ("wqkv", "wo", "w13", "w2")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # module names (last component)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoRAConfig:
        return cls(**{k: d[k] for k in ("rank", "alpha", "dropout", "targets") if k in d})


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5), generator=generator)  # as nn.Linear's own init, and as peft does
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:  # callers that read .weight (e.g. dtype checks) see the base weight
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (.., in) -> (.., r) -> (.., out): never materialise the (out, in) update while training
        return self.base(x) + (self.dropout(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        """An nn.Linear whose weight is W + scale * B A."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + (self.lora_b @ self.lora_a) * self.scale)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _targets(model: nn.Module, names: list[str] | tuple[str, ...]) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for _, module in model.named_modules():
        for child_name, child in module.named_children():
            if child_name in names and isinstance(child, nn.Linear):
                found.append((module, child_name, child))
    return found


def apply_lora(model: nn.Module, config: LoRAConfig, seed: int | None = None) -> nn.Module:
    """Freeze every base parameter and wrap the target Linears in adapters (in place; returns the model)."""
    found = _targets(model, config.targets)
    if not found:
        raise ValueError(f"no nn.Linear named {config.targets} in the model; nothing to adapt")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for parent, name, linear in found:
        setattr(parent, name, LoRALinear(linear, config.rank, config.alpha, config.dropout, gen))
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights, under their names in the adapted model."""
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def load_lora_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load adapter weights into a model already wrapped by apply_lora; names must match exactly."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise ValueError(f"adapter tensor {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear (in place; returns the model)."""
    for _, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model

