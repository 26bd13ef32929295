"""Model hyper-parameters as dataclasses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ModelConfig:
    """A Llama-family decoder. Defaults are SmolLM2-135M's; every other field's default is Llama's behaviour, so a
    config.json written before a field existed still loads as it did."""

    arch: str = "llama"  # the GGUF architecture it came from: llama, qwen2, qwen3, gemma2, gemma3, phi3
    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536  # gated FFN inner width
    max_seq_len: int = 8192
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    qkv_bias: bool = False  # qwen2
    dropout: float = 0.0  # training only
    # --- what the other families add (lm/gguf.py sets them from the GGUF's metadata)
    key_length: int = 0  # head_dim when it is not dim / n_heads (qwen3, gemma: 256); 0 = dim / n_heads
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (qwen3, gemma3)
    post_norms: bool = False  # RMSNorm on the attention and FFN outputs before the residual add (gemma2/3)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (gemma: sqrt(dim))
    activation: str = "silu"  # gate activation of the FFN: "silu" (SwiGLU) or "gelu_tanh" (gemma's GeGLU)
    query_scale: float = 0.0  # attention scores' scale; 0 = 1/sqrt(head_dim) (gemma: query_pre_attn_scalar^-0.5)
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap) before the softmax; 0 = off (gemma2: 50)
    final_softcap: float = 0.0  # the same on the output logits; 0 = off (gemma2: 30)
    sliding_window: int = 0  # local layers see the last `sliding_window` positions (themselves included); 0 = off
    global_every: int = 0  # with a window: every n-th layer (n-1, 2n-1, ...) is global, the rest local;
    #                        0 = every layer local (mistral, phi3); gemma2: 2, gemma3: 6
    rope_local_theta: float = 0.0  # RoPE base of the local layers; 0 = rope_theta (gemma3: 10000)
    rope_scale: float = 1.0  # linear RoPE scaling of the global layers: positions / rope_scale
    rope_freq_factors: list[float] | None = None  # inv_freq / factors (llama3's rope_freqs, phi3's longrope)
    rope_attn_factor: float = 1.0  # cos and sin multiplied by it (phi3's longrope)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads and not self.key_length:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"unknown activation {self.activation!r}; choose silu or gelu_tanh")

    @property
    def head_dim(self) -> int:
        return self.key_length or self.dim // self.n_heads

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends within the sliding window (a local layer) rather than to every position."""
        return self.sliding_window > 0 and not (self.global_every and (layer + 1) % self.global_every == 0)

    def to_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: Path) -> ModelConfig:
        return cls(**json.loads(Path(path).read_text()))
