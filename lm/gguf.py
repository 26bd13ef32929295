"""GGUF reading: metadata, dequantized tensors, Q/K un-permute, tokenizer tables.

Built on the `gguf` package (llama.cpp's reader). Supported architectures are `llama` (SmolLM2,
TinyLlama-style) and `qwen2` (q/k/v biases). Quantized tensors (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...) are
dequantized to float32 here; lm/quant.py decides how the engine keeps them afterwards.

llama.cpp's converter permutes the rows of Q and K for `llama` so that its interleaved RoPE matches HF's
rotate-half RoPE; we undo that so our weights equal the original HF checkpoint's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lm.config import ModelConfig

SUPPORTED_ARCHS = ("llama", "qwen2")
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K")


class GGUFError(ValueError):
    pass


@dataclass
class GGUFModel:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)


def _open(path: Path):
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # the reader fails in many ways on a cut file: memmap size, struct unpacking, ...
        raise GGUFError(f"{path}: unreadable GGUF (truncated or corrupt?): {e}") from e
    size = path.stat().st_size
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise GGUFError(f"{path}: truncated: tensor data ends at byte {end:,} but the file has {size:,} bytes")
    return reader


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key/value of the file's header (token tables included) as plain Python values."""
    return _metadata(_open(path))


def _metadata(reader) -> dict[str, Any]:
    out = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = fld.contents()
        except Exception:  # an exotic value type we do not need; keep going
            continue
    return out


def config_from_metadata(meta: dict[str, Any], has_output: bool) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"unsupported architecture {arch!r}; docent loads {', '.join(SUPPORTED_ARCHS)}")

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise GGUFError(f"GGUF metadata is missing {full}")
        return meta[full]

    n_heads = int(need("attention.head_count"))
    dim = int(need("embedding_length"))
    vocab = int(meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", [])))
    rope_dim = meta.get(f"{arch}.rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != dim // n_heads:
        raise GGUFError(f"partial rotary embeddings ({rope_dim} of {dim // n_heads}) are not supported")
    return ModelConfig(
        arch=arch,
        vocab_size=vocab,
        dim=dim,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        hidden_dim=int(need("feed_forward_length")),
        max_seq_len=int(meta.get(f"{arch}.context_length", 2048)),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=not has_output,
        qkv_bias=arch == "qwen2",
    )


def _dequantize(tensor) -> np.ndarray:
    from gguf import quants

    name = tensor.tensor_type.name
    if name not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor {tensor.name} has type {name}, which docent cannot load")
    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGML lists dims innermost first
    if name == "F32":
        arr = np.asarray(tensor.data, dtype=np.float32)
    elif name == "F16":
        arr = np.asarray(tensor.data, dtype=np.float16).astype(np.float32)
    else:
        arr = quants.dequantize(tensor.data, tensor.tensor_type)
    return arr.reshape(shape)


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's Q/K row permutation: rows are (head, pair, half) -> (head, half, pair)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf(path: Path) -> GGUFModel:
    """Read a GGUF file into a ModelConfig and a float32 state dict for lm.model.Transformer."""
    reader = _open(path)
    meta = _metadata(reader)
    raw = {t.name: t for t in reader.tensors}
    cfg = config_from_metadata(meta, has_output="output.weight" in raw)

    def get(name: str) -> torch.Tensor:
        if name not in raw:
            raise GGUFError(f"GGUF is missing tensor {name}")
        return torch.from_numpy(np.array(_dequantize(raw[name]), dtype=np.float32))  # a writable copy

    sd: dict[str, torch.Tensor] = {"tok_embeddings.weight": get("token_embd.weight"), "norm.weight": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        sd["output.weight"] = get("output.weight")
    for i in range(cfg.n_layers):
        p, o = f"blk.{i}.", f"layers.{i}."
        q, k, v = get(p + "attn_q.weight"), get(p + "attn_k.weight"), get(p + "attn_v.weight")
        if cfg.arch == "llama":
            q, k = unpermute(q, cfg.n_heads), unpermute(k, cfg.n_kv_heads)
        sd[o + "attention.wqkv.weight"] = torch.cat([q, k, v])
        if cfg.qkv_bias:
            sd[o + "attention.wqkv.bias"] = torch.cat([get(p + "attn_q.bias"), get(p + "attn_k.bias"), get(p + "attn_v.bias")])
        sd[o + "attention.wo.weight"] = get(p + "attn_output.weight")
        sd[o + "attention_norm.weight"] = get(p + "attn_norm.weight")
        sd[o + "ffn_norm.weight"] = get(p + "ffn_norm.weight")
        sd[o + "feed_forward.w13.weight"] = torch.cat([get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")])
        sd[o + "feed_forward.w2.weight"] = get(p + "ffn_down.weight")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return GGUFModel(cfg, sd, meta, types)


def read_model(path: Path, max_seq_len: int | None = None):
    """A ready Transformer (float32, eval mode) and its metadata."""
    from lm.model import Transformer, rope_tables

    g = load_gguf(path)
    if max_seq_len:
        g.config.max_seq_len = min(g.config.max_seq_len, max_seq_len)
    with torch.device("meta"):
        model = Transformer(g.config)
    model = model.to_empty(device="cpu")
    model.load_state_dict(g.state_dict, strict=False, assign=True)
    if g.config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope_cos, model.rope_sin = rope_tables(g.config.head_dim, g.config.max_seq_len, g.config.rope_theta)
    missing = set(model.state_dict()) - set(g.state_dict) - ({"output.weight"} if g.config.tie_embeddings else set())
    if missing:
        raise GGUFError(f"GGUF did not provide {sorted(missing)[:5]}")
    return model.eval(), g
