"""BERT-family sentence encoder (all-MiniLM-L6-v2): our own small BERT, mean pooling, L2 normalisation.

    enc = Encoder.load(hub.pull("minilm-l6", cache_dir))  # dtype="auto": bf16 matmuls where the CPU has them
    vecs = enc.encode(["a sentence", "another"])          # (N, 384) float32, unit rows, input order

The model is a post-LayerNorm BERT encoder (word + position + token-type embeddings, N blocks of
self-attention and a GELU MLP). Weights come from a Hugging Face `model.safetensors`, the tokenizer from
`tokenizer.json` (HF `tokenizers`); padding is ours. Speed comes from a few decisions:
- texts are sorted by token length and batched with their neighbours, so a batch is padded to its own
  longest text, not to 256;
- query/key/value are one fused matmul and attention is `F.scaled_dot_product_attention`;
- on CPUs with native bf16 (avx512_bf16 / AMX) the transformer blocks run in bf16 with their weights
  pre-packed for oneDNN and GELU fused into the first MLP matmul, while embeddings and pooling stay fp32
  (cosine >= 0.9998 against sentence-transformers fp32; the integration test holds it to 0.999);
- int8 dynamic quantization is available but loses too much (cosine ~0.93-0.97), so it is never "auto";
- torch threads are set to the cores we may use, only for the duration of `encode`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lm.quant import native_bf16

DTYPES = ("auto", "fp32", "bf16", "int8")
DEFAULT_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence-transformers), specials included
ENCODE_BLOCK = 1024  # texts tokenized at a time by Encoder.encode (~50 MB of Encodings for 256-token texts)


class EncoderLoadError(RuntimeError):
    """The model directory is missing a file, or its weights do not fit the config."""


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    @classmethod
    def from_json(cls, path: Path) -> EncoderConfig:
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise EncoderLoadError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise EncoderLoadError(f"{path}: only absolute position embeddings are supported")
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in names})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise EncoderLoadError(f"{path}: hidden_size {cfg.hidden_size} is not a multiple of the head count")
        return cfg


# ----------------------------------------------------------------------------------------------- model


class Block(nn.Module):
    """One post-LayerNorm BERT layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        c = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.qkv = nn.Linear(c, 3 * c)  # query, key, value fused: one matmul instead of three
        self.attn_out = nn.Linear(c, c)
        self.ln1 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.fc = nn.Linear(c, cfg.intermediate_size)
        self.act: nn.Module = nn.GELU()  # exact (erf) GELU, BERT's "gelu"
        self.proj = nn.Linear(cfg.intermediate_size, c)
        self.ln2 = nn.LayerNorm(c, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, C); key_mask: (B, 1, 1, T), True where a real token, or None: no padding
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)
        x = self.ln1(x + self.attn_out(y))
        return self.ln2(x + self.proj(self.act(self.fc(x))))


class Bert(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, c)
        self.pos_emb = nn.Embedding(cfg.max_position_embeddings, c)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, c)
        self.ln_emb = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # ids, mask: (B, T) -> token states (B, T, C) in fp32
        T = ids.shape[1]
        # single-segment input: every token has token_type 0
        x = self.tok_emb(ids) + self.pos_emb.weight[:T] + self.type_emb.weight[0]
        x = self.ln_emb(x).to(self.blocks[0].ln1.weight.dtype)  # (B, T, C) fp32 -> the blocks' dtype
        # (B, 1, 1, T): padding keys are never attended to; a batch without padding (common after length
        # sorting, every text cut at max_tokens) needs no mask, and the unmasked kernel is a bit faster
        key_mask = None if bool(mask.all()) else mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_mask)
        return x.float()


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then L2 normalisation. states (B, T, C), mask (B, T) -> (B, C)."""
    m = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    summed = (states * m).sum(dim=1)
    pooled = summed / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


# ------------------------------------------------------------------------------------- weight loading

# HF BERT parameter names -> ours. query/key/value are handled apart: they are concatenated into `qkv`.
_LAYER_MAP = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "ln1",
    "intermediate.dense": "fc",
    "output.dense": "proj",
    "output.LayerNorm": "ln2",
}
_TOP_MAP = {
    "embeddings.word_embeddings.weight": "tok_emb.weight",
    "embeddings.position_embeddings.weight": "pos_emb.weight",
    "embeddings.token_type_embeddings.weight": "type_emb.weight",
    "embeddings.LayerNorm.weight": "ln_emb.weight",
    "embeddings.LayerNorm.bias": "ln_emb.bias",
}
# present in HF checkpoints but not used by a mean-pooling encoder: a buffer and the [CLS] pooler
_IGNORED = re.compile(r"^(embeddings\.position_ids|pooler\..*)$")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def _hf_to_ours(hf: dict[str, torch.Tensor], n_layers: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an HF BERT state dict to our names; returns (our state dict, unexpected HF keys)."""
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, t in hf.items():
        key = name.removeprefix("bert.")
        if key in _TOP_MAP:
            out[_TOP_MAP[key]] = t
            continue
        if _IGNORED.match(key):
            continue
        m = _LAYER_RE.match(key)
        if m and int(m.group(1)) < n_layers:
            i, part, kind = int(m.group(1)), m.group(2), m.group(3)
            if part in ("attention.self.query", "attention.self.key", "attention.self.value"):
                qkv.setdefault((i, kind), {})[part.rsplit(".", 1)[1]] = t
                continue
            if part in _LAYER_MAP:
                out[f"blocks.{i}.{_LAYER_MAP[part]}.{kind}"] = t
                continue
        unexpected.append(name)
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        # an incomplete q/k/v triple leaves blocks.i.qkv missing, which is reported as such
    return out, unexpected


def load_bert(model_dir: Path) -> Bert:
    """Build our Bert from `config.json` + `model.safetensors`; any missing/unexpected key is an error."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    for fname in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (model_dir / fname).is_file():
            raise EncoderLoadError(f"{model_dir}: {fname} is missing (expected config.json, model.safetensors, "
                                   "tokenizer.json)")
    cfg = EncoderConfig.from_json(model_dir / "config.json")
    try:
        hf = load_file(str(model_dir / "model.safetensors"))
    except Exception as e:  # safetensors raises several types for a truncated or foreign file
        raise EncoderLoadError(f"{model_dir / 'model.safetensors'}: not a readable safetensors file ({e})") from e
    model = Bert(cfg)
    ours, unexpected = _hf_to_ours(hf, cfg.num_hidden_layers)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing or unexpected:
        raise EncoderLoadError(
            f"{model_dir / 'model.safetensors'} does not match a {cfg.num_hidden_layers}-layer BERT: "
            f"missing {_names(missing)}; unexpected {_names(unexpected)}"
        )
    bad = [f"{k} {tuple(ours[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if ours[k].shape != v.shape]
    if bad:
        raise EncoderLoadError(f"{model_dir / 'model.safetensors'}: shape mismatch: " + "; ".join(bad[:5]))
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    return model.eval()


def _names(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ------------------------------------------------------------------------------------------ encoder


def default_threads() -> int:
    """The cores this process may run on; more threads than cores makes matmuls slower, not faster."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use n intra-op threads inside the block and restore the process's setting after it."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


class Encoder:
    """A loaded sentence encoder: `encode(texts) -> (N, dim)` unit vectors, `count_tokens(text)`."""

    def __init__(self, model: nn.Module, tokenizer, max_tokens: int, dtype: str, threads: int):
        self.model = model
        self.tokenizer = tokenizer  # no truncation, no padding: we do both
        self.dtype = dtype
        self.threads = threads
        self.dim = model.cfg.hidden_size
        self.max_tokens = max_tokens  # the longest input the model sees, [CLS] and [SEP] included
        self.max_text_tokens = max_tokens - 2  # text tokens that fit before truncation starts
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0

    @classmethod
    def load(cls, path_dir: str | Path, dtype: str = "auto", threads: int | None = None,
             max_tokens: int | None = None) -> Encoder:
        """Load from a directory with config.json, model.safetensors and tokenizer.json.

        dtype: "fp32"; "bf16" (transformer blocks in bf16, embeddings and pooling fp32); "int8" (dynamic
        int8 linear layers: lossy, cosine ~0.95); "auto" = bf16 when the CPU has native bf16, else fp32.
        threads: torch threads while encoding (default: the cores this process may use).
        max_tokens: input length cap, specials included (default: sentence_bert_config.json, else 256).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        from tokenizers import Tokenizer

        path_dir = Path(path_dir)
        if not path_dir.is_dir():
            raise EncoderLoadError(f"{path_dir} is not a directory (expected an encoder model directory)")
        model = load_bert(path_dir)
        try:
            tok = Tokenizer.from_file(str(path_dir / "tokenizer.json"))
        except Exception as e:
            raise EncoderLoadError(f"{path_dir / 'tokenizer.json'}: not a readable tokenizer ({e})") from e
        tok.no_truncation()  # the shipped tokenizer.json truncates/pads to 128; we truncate to max_tokens
        tok.no_padding()
        max_tokens = min(max_tokens or _read_max_seq_length(path_dir), model.cfg.max_position_embeddings)
        if dtype == "auto":
            dtype = "bf16" if native_bf16() else "fp32"
        model = _apply_dtype(model, dtype)
        return cls(model, tok, max_tokens, dtype, threads or default_threads())

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` without [CLS]/[SEP] and without truncation."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP], truncated to max_tokens (keeping the final [SEP])."""
        out = []
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            if len(ids) > self.max_tokens:
                ids = ids[: self.max_tokens - 1] + ids[-1:]  # = HF's truncation of the text, then [SEP]
            out.append(ids)
        return out

    def encode(self, texts: list[str], batch_size: int = 64,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Embed texts; returns (N, dim) float32 with unit-norm rows, in the order of `texts`."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings; wrap a single text in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        done = 0
        with torch_threads(self.threads), torch.inference_mode():
            # a block of texts at a time: tokenizers' Encodings cost ~100 bytes per token, so tokenizing a
            # 20 MB upload's chunks and windows at once took gigabytes
            for first in range(0, n, ENCODE_BLOCK):
                ids = self.tokenize(list(texts[first:first + ENCODE_BLOCK]))
                # longest first: padding stays within a batch of similar lengths
                order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
                for start in range(0, len(ids), batch_size):
                    rows = order[start:start + batch_size]
                    batch_ids, mask = self._pad([ids[i] for i in rows])
                    vecs = mean_pool(self.model(batch_ids, mask), mask)  # (b, C)
                    out[[first + i for i in rows]] = vecs.float().numpy()
                    done += len(rows)
                    if progress is not None:
                        progress(done, n)
        return out

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(seqs), T), dtype=torch.bool)  # (B, T)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
        return ids, mask


def _read_max_seq_length(path_dir: Path) -> int:
    cfg = path_dir / "sentence_bert_config.json"  # present in a full sentence-transformers directory
    if cfg.is_file():
        try:
            return int(json.loads(cfg.read_text())["max_seq_length"])
        except (ValueError, KeyError, TypeError):
            pass
    return DEFAULT_MAX_TOKENS


class PackedLinear(nn.Module):
    """A bf16 linear layer with its weight pre-packed for oneDNN, optionally fused with GELU.

    This is what torch.compile's CPU backend emits for a linear layer; calling it directly avoids
    re-packing the weight on every call and a separate pass over the (B*T, 1536) GELU input: together
    about 1.3x on the block's matmuls here.
    """

    def __init__(self, lin: nn.Linear, gelu: bool = False, batch_hint: int = 4096):
        super().__init__()
        w = lin.weight.detach().to(torch.bfloat16)
        self.out_features = w.shape[0]
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)  # opaque oneDNN layout
        self.bias = lin.bias.detach().to(torch.bfloat16)
        self.post_op = "gelu" if gelu else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in) bf16 -> (..., out) bf16
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias,
                                               self.post_op, [], "none")  # "none": erf GELU, not tanh
        return y.view(*x.shape[:-1], self.out_features)


@functools.cache
def _can_pack() -> bool:
    """Whether this torch build runs PackedLinear (the ops are internal to torch, so try them once)."""
    try:
        lin = nn.Linear(4, 4).to(torch.bfloat16)
        with torch.inference_mode():
            x = torch.ones(2, 4, dtype=torch.bfloat16)
            return bool(torch.allclose(PackedLinear(lin)(x).float(), lin(x).float(), atol=0.05))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _apply_dtype(model: Bert, dtype: str) -> nn.Module:
    if dtype == "bf16":
        # the transformer blocks run in bf16 end to end (casting activations around each matmul cost as
        # much as bf16 saved); the embeddings and the pooling stay fp32
        model.blocks.to(torch.bfloat16)
        if _can_pack():
            for b in model.blocks:
                b.qkv, b.attn_out, b.proj = PackedLinear(b.qkv), PackedLinear(b.attn_out), PackedLinear(b.proj)
                b.fc, b.act = PackedLinear(b.fc, gelu=True), nn.Identity()
    elif dtype == "int8":
        # per-channel scales: per-tensor int8 drops the cosine to ~0.92 on MiniLM (activation outliers);
        # per-channel still only reaches ~0.97, below our 0.999 bound, so int8 is never the default
        import warnings

        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager-mode quantization is deprecated in favour of torchao
            model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


__all__ = ["Encoder", "EncoderConfig", "EncoderLoadError", "Bert", "load_bert", "mean_pool", "cosine",
           "default_threads", "DTYPES"]
