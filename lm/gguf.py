"""GGUF reading: metadata, dequantized tensors, each architecture's layout -> lm.model.Transformer's.

Supported architectures: `llama` (SmolLM2, Llama 2/3.x, Mistral, which llama.cpp writes as `llama`), `qwen2`,
`qwen3`, `gemma2`, `gemma3` and `phi3`. Quantized tensors (every type `gguf.quants` can dequantize: Q8_0, Q4_K,
Q6_K, the I-quants, ...) are dequantized to float32 here; lm/quant.py decides how the engine keeps them after.

What llama.cpp's converter changed, undone or used as it is:
- `llama`: the rows of Q and K are permuted so that its interleaved RoPE matches HF's rotate-half RoPE; we undo
  that so our weights equal the original HF checkpoint's. The other families use rotate-half RoPE as written.
- gemma: norm weights were stored as 1 + w (Gemma's RMSNorm multiplies by 1 + w), so they are plain weights here.
- phi3: Q/K/V and gate/up come fused (`attn_qkv`, `ffn_up`), in our fused layout already.
- llama3's `rope_freqs` and phi3's `rope_factors_short/long` divide the RoPE frequencies.

The header is parsed here rather than by gguf.GGUFReader, which makes a numpy view per array element: a Gemma 3
vocabulary of 262,144 tokens took it 26 s to read, against well under a second here.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lm.config import ModelConfig

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# what gguf.quants can dequantize (Q8_1, Q8_K and the integer types it cannot)
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
                   "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS",
                   "TQ1_0", "TQ2_0", "MXFP4")
GEMMA3_LOCAL_THETA = 10000.0  # llama.cpp's value for gemma3's local layers when the file names none


class GGUFError(ValueError):
    pass


@dataclass
class GGUFModel:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    type_name: str
    offset: int  # in the file
    n_bytes: int


class GGUFFile:
    """A GGUF file's metadata and tensor table, its tensor data memory-mapped."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}
    _ARRAYS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
               7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}

    def __init__(self, path: Path):
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self.path = path = Path(path)
        if not path.is_file():
            raise GGUFError(f"{path}: no such file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise GGUFError(f"{path}: not a GGUF file (bad magic)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf, self._at = memoryview(self._map), 4
        try:
            version = self._read("<I")
            if version not in (2, 3):
                raise GGUFError(f"{path}: GGUF version {version} is not supported (big-endian or too new?)")
            n_tensors, n_kv = self._read("<Q"), self._read("<Q")
            self.metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = self._string()
                self.metadata[key] = self._value(self._read("<I"))
            infos = []
            for _ in range(n_tensors):
                name = self._string()
                dims = [self._read("<Q") for _ in range(self._read("<I"))]
                infos.append((name, tuple(reversed(dims)), self._read("<I"), self._read("<Q")))
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
            if isinstance(e, GGUFError):
                raise
            raise GGUFError(f"{path}: unreadable GGUF header (truncated or corrupt?): {e}") from e
        align = int(self.metadata.get("general.alignment", 32))
        start = -(-self._at // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, kind, offset in infos:
            try:
                qtype = GGMLQuantizationType(kind)
            except ValueError:
                raise GGUFError(f"{path}: tensor {name} has an unknown type number {kind}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_bytes = math.prod(shape) // block * type_size
            self.tensors[name] = TensorInfo(name, shape, qtype.name, start + offset, n_bytes)
        end = max((t.offset + t.n_bytes for t in self.tensors.values()), default=0)
        if end > size:
            raise GGUFError(f"{path}: truncated: tensor data ends at byte {end:,} but the file has {size:,} bytes")

    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._buf, self._at)[0]
        self._at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._read("<Q")
        if self._at + n > len(self._buf):
            raise ValueError("string runs past the end of the file")
        s = bytes(self._buf[self._at:self._at + n]).decode("utf-8", errors="replace")
        self._at += n
        return s

    def _value(self, kind: int) -> Any:
        if kind in self._SCALARS:
            return self._read(self._SCALARS[kind])
        if kind == 8:
            return self._string()
        if kind != 9:
            raise ValueError(f"unknown value type {kind}")
        item, n = self._read("<I"), self._read("<Q")
        if item in self._ARRAYS:  # numbers in one go
            dtype = np.dtype(self._ARRAYS[item]).newbyteorder("<")
            arr = np.frombuffer(self._buf, dtype=dtype, count=n, offset=self._at)
            self._at += n * dtype.itemsize
            return arr.tolist()
        return [self._value(item) for _ in range(n)]

    def raw(self, name: str) -> np.ndarray:
        """The tensor's stored bytes (quantized types) or values (float types), in numpy order."""
        t = self.tensors[name]
        data = np.frombuffer(self._buf, dtype=np.uint8, count=t.n_bytes, offset=t.offset)
        if t.type_name == "F32":
            return data.view(np.float32).reshape(t.shape)
        if t.type_name == "F16":
            return data.view(np.float16).reshape(t.shape)
        return data.reshape(*t.shape[:-1], -1)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, in numpy order (outermost dimension first)."""
        from gguf import GGMLQuantizationType, quants

        t = self.tensors[name]
        if t.type_name not in SUPPORTED_TYPES:
            raise GGUFError(f"tensor {name} has type {t.type_name}, which docent cannot load "
                            f"(it loads {', '.join(SUPPORTED_TYPES)})")
        raw = self.raw(name)
        if t.type_name in ("F32", "F16"):
            return raw.astype(np.float32)
        return quants.dequantize(raw, GGMLQuantizationType[t.type_name]).reshape(t.shape)


def _open(path: Path) -> GGUFFile:
    return GGUFFile(path)


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key/value of the file's header (token tables included) as plain Python values."""
    return dict(_open(path).metadata)


def config_from_metadata(meta: dict[str, Any], tensors: set[str] | bool,
                         max_seq_len: int | None = None) -> ModelConfig:
    """The ModelConfig a GGUF's header and tensor names describe (the context capped at max_seq_len).

    `tensors` is the set of tensor names (True/False: whether it has output.weight, for a llama-like file)."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"unsupported architecture {arch!r}; docent loads {', '.join(SUPPORTED_ARCHS)} "
                        "(and mistral, which GGUF files name llama)")
    if isinstance(tensors, bool):
        tensors = {"output.weight"} if tensors else set()

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise GGUFError(f"GGUF metadata is missing {full}")
        return meta[full]

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_heads, dim, n_layers = int(need("attention.head_count")), int(need("embedding_length")), int(need("block_count"))
    head_dim = int(get("attention.key_length") or dim // n_heads)
    if int(get("attention.value_length") or head_dim) != head_dim:
        raise GGUFError(f"value heads of {get('attention.value_length')} differ from key heads of {head_dim}; "
                        "docent does not support that")
    rope_dim = get("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise GGUFError(f"partial rotary embeddings ({rope_dim} of {head_dim}) are not supported")
    context = int(get("context_length", 2048))
    ctx = min(context, max_seq_len) if max_seq_len else context
    gemma = arch in ("gemma2", "gemma3")
    cfg = dict(
        arch=arch, vocab_size=int(get("vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))), dim=dim,
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        hidden_dim=int(need("feed_forward_length")), max_seq_len=ctx,
        rope_theta=float(get("rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensors, qkv_bias="blk.0.attn_q.bias" in tensors,
        key_length=head_dim if head_dim * n_heads != dim else 0,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        sliding_window=int(get("attention.sliding_window") or 0) if arch in ("llama", "phi3", "gemma3") else 0,
    )
    if gemma:
        # llama.cpp's scale (from gemma_pytorch): query_pre_attn_scalar = dim / heads for the 27B models (46 and 62
        # layers), head_dim for the others; a file may state it
        scalar = dim // n_heads if n_layers == {"gemma2": 46, "gemma3": 62}[arch] else head_dim
        cfg.update(embed_scale=math.sqrt(dim), activation="gelu_tanh", post_norms=True,
                   query_scale=float(get("attention.scale") or scalar ** -0.5))
    if arch == "gemma2":
        cfg.update(attn_softcap=float(get("attn_logit_softcapping") or 50.0),
                   final_softcap=float(get("final_logit_softcapping") or 30.0),
                   sliding_window=int(get("attention.sliding_window") or 4096), global_every=2)
    if arch == "gemma3":
        cfg.update(final_softcap=float(get("final_logit_softcapping") or 0.0))
        if cfg["sliding_window"]:
            cfg.update(global_every=_global_every(get("attention.sliding_window_pattern"), 6, n_layers),
                       rope_local_theta=float(get("rope.freq_base_swa") or GEMMA3_LOCAL_THETA))
    cfg.update(_rope_scaling(arch, get))
    return ModelConfig(**cfg)


def _global_every(pattern: Any, default: int, n_layers: int) -> int:
    """gemma's every-n-th-layer-global period, from `attention.sliding_window_pattern` (a period, or one bool per
    layer, True = local) when the file has one."""
    if pattern is None:
        return default
    if isinstance(pattern, int):
        return pattern
    local = [bool(p) for p in pattern]
    for n in range(1, n_layers + 1):
        if local == [(i + 1) % n != 0 for i in range(n_layers)]:
            return n
    raise GGUFError(f"sliding-window layer pattern {local} is not every-n-th-layer-global; docent cannot run it")


def _rope_scaling(arch: str, get) -> dict[str, Any]:
    kind = get("rope.scaling.type") or "none"
    factor = float(get("rope.scaling.factor") or get("rope.scale_linear") or 1.0)
    if kind == "none" or factor == 1.0:
        return {}
    if kind == "linear":
        return {"rope_scale": factor}
    raise GGUFError(f"RoPE scaling {kind!r} is not supported; docent supports linear scaling, llama3's rope_freqs "
                    "and phi3's longrope factors")


def _rope_factors(f: GGUFFile, cfg: ModelConfig, meta: dict[str, Any]) -> None:
    """llama3's rope_freqs, or phi3's longrope factors (the short ones within the original context, as llama.cpp
    picks them by the context it runs with), into the config."""
    if "rope_freqs.weight" in f.tensors:
        cfg.rope_freq_factors = [float(x) for x in f.dequantize("rope_freqs.weight").reshape(-1)]
    elif "rope_factors_short.weight" in f.tensors:
        original = int(meta.get(f"{cfg.arch}.rope.scaling.original_context_length") or cfg.max_seq_len)
        which = "short" if cfg.max_seq_len <= original else "long"
        cfg.rope_freq_factors = [float(x) for x in f.dequantize(f"rope_factors_{which}.weight").reshape(-1)]
        cfg.rope_attn_factor = float(meta.get(f"{cfg.arch}.rope.scaling.attn_factor") or 1.0)
    if cfg.rope_freq_factors is not None and len(cfg.rope_freq_factors) != cfg.head_dim // 2:
        raise GGUFError(f"RoPE factors have {len(cfg.rope_freq_factors)} values for a head of {cfg.head_dim}")


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's Q/K row permutation: rows are (head, pair, half) -> (head, half, pair)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf(path: Path, max_seq_len: int | None = None) -> GGUFModel:
    """Read a GGUF file into a ModelConfig and a float32 state dict for lm.model.Transformer."""
    f = _open(path)
    meta = f.metadata
    cfg = config_from_metadata(meta, set(f.tensors), max_seq_len)
    _rope_factors(f, cfg, meta)

    def get(name: str) -> torch.Tensor:
        if name not in f.tensors:
            raise GGUFError(f"GGUF is missing tensor {name}")
        return torch.from_numpy(np.array(f.dequantize(name), dtype=np.float32))  # a writable copy

    sd: dict[str, torch.Tensor] = {"tok_embeddings.weight": get("token_embd.weight"), "norm.weight": get("output_norm.weight")}
    if not cfg.tie_embeddings:
        sd["output.weight"] = get("output.weight")
    for i in range(cfg.n_layers):
        p, o = f"blk.{i}.", f"layers.{i}."
        if p + "attn_qkv.weight" in f.tensors:  # phi3: already fused, q then k then v
            sd[o + "attention.wqkv.weight"] = get(p + "attn_qkv.weight")
        else:
            q, k, v = get(p + "attn_q.weight"), get(p + "attn_k.weight"), get(p + "attn_v.weight")
            if cfg.arch == "llama":
                q, k = unpermute(q, cfg.n_heads), unpermute(k, cfg.n_kv_heads)
            sd[o + "attention.wqkv.weight"] = torch.cat([q, k, v])
        if cfg.qkv_bias:
            sd[o + "attention.wqkv.bias"] = torch.cat([get(p + "attn_q.bias"), get(p + "attn_k.bias"), get(p + "attn_v.bias")])
        if cfg.qk_norm:
            sd[o + "attention.q_norm.weight"] = get(p + "attn_q_norm.weight")
            sd[o + "attention.k_norm.weight"] = get(p + "attn_k_norm.weight")
        sd[o + "attention.wo.weight"] = get(p + "attn_output.weight")
        sd[o + "attention_norm.weight"] = get(p + "attn_norm.weight")
        sd[o + "ffn_norm.weight"] = get(p + "ffn_norm.weight")
        if cfg.post_norms:
            sd[o + "post_attention_norm.weight"] = get(p + "post_attention_norm.weight")
            sd[o + "post_ffn_norm.weight"] = get(p + "post_ffw_norm.weight")
        if p + "ffn_gate.weight" in f.tensors:
            sd[o + "feed_forward.w13.weight"] = torch.cat([get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")])
        else:  # phi3: gate and up fused in ffn_up, gate first
            sd[o + "feed_forward.w13.weight"] = get(p + "ffn_up.weight")
        sd[o + "feed_forward.w2.weight"] = get(p + "ffn_down.weight")
    types = {t.name: t.type_name for t in f.tensors.values()}
    return GGUFModel(cfg, sd, dict(meta), types)


def read_model(path: Path, max_seq_len: int | None = None):
    """A ready Transformer (float32, eval mode) and its metadata."""
    from lm.model import Transformer

    g = load_gguf(path, max_seq_len)
    with torch.device("meta"):
        model = Transformer(g.config)
    model = model.to_empty(device="cpu")
    expected = set(model.state_dict()) - ({"output.weight"} if g.config.tie_embeddings else set())
    model.load_state_dict(g.state_dict, strict=False, assign=True)
    if g.config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope()
    missing = expected - set(g.state_dict)
    if missing:
        raise GGUFError(f"GGUF did not provide {sorted(missing)[:5]}")
    return model.eval(), g
