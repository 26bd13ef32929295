"""A Llama-family decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied head.

`forward(idx, targets=None, cache=None)`:
- with `targets`: returns the mean cross-entropy loss (positions whose target is -100 are ignored; the
  chat template's loss mask is applied that way);
- with a cache: appends the new tokens' keys/values at the cache's position(s), advances it, and returns the
  logits of the LAST position only, (B, 1, V), since that is all generation needs (a 1,024-token prefill would
  otherwise spend a third of its time on a 1024 x 49152 head);
- otherwise: logits for every position, (B, T, V).

A cache is anything with the four methods of `KVCache`: `rope` (the positions of the new tokens), `update`
(store new keys/values, return all of them), `mask` (which keys each query may see) and `advance`. `KVCache`
has one position for the whole batch; `lm.slots.SlotBatch` gives every row its own, for continuous batching.
Keys and values are kept in the cache's dtype (bf16 halves the memory and the attention time of a long
context); queries are cast to it for the attention and the output cast back.

Q/K/V and gate/up projections are fused (one matmul each instead of three and two) because at batch size 1 the
cost of a decode step is dominated by the number of kernel launches, not by FLOPs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self._rows_weight = None  # rows()'s (weight's storage and version, weight * sqrt(dim), sqrt(dim * eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32: bf16 activations lose too much precision in the mean of squares
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """forward() on (R, C) float32 decode rows, in three kernels where torch 2.13's CPU rms_norm runs six
        (17 against 9 us at one row; this runs 61 times a token): with rms(x) = hypot(|x|, sqrt(C eps)) / sqrt(C),
        x / rms(x) * w = x / hypot(|x|, sqrt(C eps)) * (w sqrt(C)), and w sqrt(C) is kept until w changes."""
        weight = self._parameters["weight"]
        if x.dtype != torch.float32 or weight.dtype != torch.float32 or weight.is_inference():
            return self.forward(x)  # (an inference tensor keeps no version to tell an in-place change by)
        key = (weight.data_ptr(), weight._version)
        if self._rows_weight is None or self._rows_weight[0] != key:
            dim = weight.shape[0]
            self._rows_weight = (key, weight.detach() * dim ** 0.5, torch.tensor((dim * self.eps) ** 0.5))
        _, scaled, floor = self._rows_weight
        return torch.div(x, torch.linalg.vector_norm(x, dim=-1, keepdim=True).hypot_(floor)).mul_(scaled)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, (max_len, head_dim), in the rotate-half layout of HF Llama, with rotate-half's sign folded
    into the sine: (-sin, +sin) over the two halves (see apply_rope)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, D)
    return emb.cos().float(), torch.cat([-freqs.sin(), freqs.sin()], dim=-1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D) with cos/sin broadcasting against it: (T, 1, D), or (B, T, 1, D) for per-row positions.

    HF's x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x2, x1): with the sign in the table, the halves
    are just swapped (a roll), three ops instead of six (this runs 30 times per decoded token).
    """
    out = torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class KVCache:
    """Pre-allocated keys and values for every layer: (n_layers, B, n_kv_heads, max_len, head_dim), one position."""

    def __init__(self, config: ModelConfig, batch_size: int = 1, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.max_len = max_len or config.max_seq_len
        shape = (config.n_layers, batch_size, config.n_kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # number of positions already filled
        self._mask: tuple[int, int, torch.Tensor | None] | None = None  # (pos, T, mask) of the current forward
        self._layers = tuple(zip(self.k.unbind(0), self.v.unbind(0), strict=True))  # per-layer views, made once

    @classmethod
    def over(cls, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], pos: int) -> KVCache:
        """A cache that writes into existing tensors, one (B, KV, capacity, D) per layer (views of a larger store),
        with `pos` positions filled."""
        cache = cls.__new__(cls)
        cache.max_len, cache.pos, cache._mask = k[0].shape[2], pos, None
        cache._layers = tuple(zip(k, v, strict=True))
        return cache

    def reset(self, pos: int = 0) -> None:
        """Forget everything after `pos` (0 = empty); kept values before it stay valid."""
        self.pos = pos

    def rope(self, cos: torch.Tensor, sin: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tables' rows for the T new positions, (T, 1, D): they broadcast over (B, T, H, D)."""
        if self.pos + T > cos.shape[0]:
            raise ValueError(f"sequence of {self.pos + T} tokens exceeds the model's context of {cos.shape[0]}")
        return cos[self.pos:self.pos + T, None], sin[self.pos:self.pos + T, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, KV, T, D) at self.pos and return all keys/values so far, (B, KV, pos+T, D)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        keys, values = self._layers[layer]  # (B, KV, max_len, D) each
        keys[:, :, self.pos:end] = k
        values[:, :, self.pos:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def mask(self, T: int) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for T new queries after self.pos cached keys."""
        if T == 1:
            return None, False  # one query sees every cached key
        if self.pos == 0:
            return None, True
        if self._mask is None or self._mask[:2] != (self.pos, T):  # made once per forward, not once per layer
            # new tokens continue a cached prefix: token i may see keys 0 .. pos+i
            device = self._layers[0][0].device
            keys = torch.arange(self.pos + T, device=device)
            self._mask = (self.pos, T, keys[None, :] <= (self.pos + torch.arange(T, device=device))[:, None])
        return self._mask[2], False

    def advance(self, T: int) -> None:
        self.pos += T


# rows x keys up to which a bf16 cache is faster read as float32 by SDPA than by two bf16 matmuls (one row, 2
# threads: 26 against 61 us per layer at 128 keys, 77 against 108 at 512). A single query row always is, in a
# whole decode step: at 1,024 keys the step took 1.22x the float32 cache's time with the matmuls and 0.98x with
# SDPA on converted keys (interleaved runs of the real model; the kernel alone measures the other way round).
SMALL_ATTENTION = 512


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     causal: bool) -> torch.Tensor:
    """q (B, H, T, D) over cached k/v (B, KV, S, D), query head h using key/value head h // (H / KV).

    mask: None, (T, S) or (B, 1, T, S), True where a key may be seen; or a float (B, 1, T, S) added to the scores
    (0 where a key may be seen, -inf where not), which the matmul path adds in the same kernel. float32 caches use SDPA's fused kernel
    (matmul, softmax, matmul as three multi-threaded kernels per layer were 10x slower with 2 threads on 2 busy
    cores), and so do small bf16 ones and single query rows (SMALL_ATTENTION), converted. In torch 2.13 that kernel is ~10x slower in
    bf16 than in float32 on CPU, while bf16 matmuls are fast, so a larger bf16 cache is read by two bf16
    matmuls around a softmax (R=8 rows at S=512: 215 us per
    layer, against 350 us for float32 SDPA and 3.7 ms for bf16 SDPA, 1 thread).
    """
    if k.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
    if q.shape[0] * q.shape[2] == 1 or q.shape[0] * k.shape[2] <= SMALL_ATTENTION:
        return F.scaled_dot_product_attention(q, k.float(), v.float(), attn_mask=mask, is_causal=causal,
                                              enable_gqa=True)
    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    G = H // KV
    # 3-D batched matmuls over (B*KV) on views of the cache (a 4-D matmul would copy a strided cache slice
    # first), and as few ops as the math allows: at one row, the ops' dispatch costs more than their work
    keys, values = k.flatten(0, 1), v.flatten(0, 1)  # (B*KV, S, D), no copy
    queries = (q * D ** -0.5).to(k.dtype).reshape(B * KV, G * T, D)
    if mask is not None and mask.dtype != torch.bool:  # an additive bias (B, 1, T, S): added by the matmul itself
        bias = mask.to(k.dtype)[:, :, None].expand(B, KV, G, T, S).reshape(B * KV, G * T, S)
        scores = torch.baddbmm(bias, queries, keys.transpose(1, 2)).view(B, KV, G, T, S)
    else:
        scores = torch.bmm(queries, keys.transpose(1, 2)).view(B, KV, G, T, S)
        if causal:  # query i (the (S-T+i)-th position) sees keys 0 .. S-T+i
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = torch.where(mask[:, :, None] if mask.dim() == 4 else mask, scores, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(B * KV, G * T, S)  # accumulated in float32 by the kernel
    return torch.bmm(probs, values).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(B, T, H + 2 * KV, D)
        # rotate the q and k heads in one go (half the small ops of a decode step's RoPE)
        qk = apply_rope(qkv[:, :, :H + KV], cos, sin)  # (B, T, H+KV, D)
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, D)
        k = qk[:, :, H:].transpose(1, 2)  # (B, KV, T, D)
        v = qkv[:, :, H + KV:].transpose(1, 2)  # (B, KV, T, D)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            k, v = cache.update(self.layer, k, v)  # (B, KV, S, D): every key this query may see, and padding
            mask, causal = cache.mask(T)
            y = cached_attention(q, k, v, mask, causal).to(x.dtype)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden = cfg.hidden_dim
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(gate).mul_(up))  # in place: silu's output is a new tensor


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer on (R, C) decode rows: its one-token path where it has one (RMSNorm, lm.quant), else forward."""
    rows = getattr(layer, "rows", None)
    return rows(x) if rows is not None else layer.forward(x)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, seed: int | None = None) -> Transformer:
        """Random initialisation for training from scratch (GPT-2 style, scaled residual projections)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            else:
                std = 0.02 / (2 * self.config.n_layers) ** 0.5 if name.endswith(("wo.weight", "w2.weight")) else 0.02
                with torch.no_grad():
                    p.normal_(0.0, std, generator=gen)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """idx: (B, T) token ids. See the module docstring for what is returned."""
        B, T = idx.shape
        if cache is not None and T == 1 and targets is None:
            return self.decode(idx, cache)
        if cache is None:
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds the model's context of {self.config.max_seq_len}")
            cos, sin = self.rope_cos[:T, None], self.rope_sin[:T, None]  # (T, 1, D)
        else:
            cos, sin = cache.rope(self.rope_cos, self.rope_sin, T)
        x = self.tok_embeddings(idx)  # (B, T, C)
        for block in self.layers:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(T)
            x = x[:, -1:]  # only the last position's logits are needed to generate
        x = self.norm(x)
        logits = self.output(x)  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def decode(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One new token per row, (B, 1) ids -> (B, 1, V) logits: forward() with a cache, for T = 1.

        The same math as forward(), written out for the loop that runs once per generated token, where the
        Python around ~60 small ops a layer costs as much as the attention: the residual stream stays (B, C), the
        layers are called through `.forward` or their one-token `rows` (nn.Module.__call__'s hook checks cost
        ~4 us a call, 270 calls a token), and no conversion runs that is a no-op. A step took 0.87x the time of
        forward()'s general path on one row (at 100 and 1,024 positions) and 0.96x on 8 rows (interleaved, one
        process). Hooks on the blocks or their submodules do not run here; tests/unit/test_engine.py checks that
        both paths give the same logits.
        """
        B = idx.shape[0]
        H, KV, D = self.config.n_heads, self.config.n_kv_heads, self.config.head_dim
        cos, sin = cache.rope(self.rope_cos, self.rope_sin, 1)  # (1, 1, D) or (B, 1, 1, D)
        cos, sin = cos.view(-1, 1, D), sin.view(-1, 1, D)  # against (B, heads, D)
        mask, causal = cache.mask(1)
        x = self.tok_embeddings.forward(idx).view(B, -1)  # (B, C)
        for i, block in enumerate(self.layers):
            # submodules straight from the module dicts: nn.Module.__getattr__ costs ~0.5 us a lookup, 20 a layer
            attention, ffn = block._modules["attention"]._modules, block._modules["feed_forward"]._modules
            qkv = _rows(attention["wqkv"], _rows(block._modules["attention_norm"], x)).view(B, H + 2 * KV, D)
            qk = apply_rope(qkv[:, :H + KV], cos, sin)  # (B, H+KV, D)
            k, v = cache.update(i, qk[:, H:, None], qkv[:, H + KV:, None])  # written as (B, KV, 1, D)
            y = cached_attention(qk[:, :H, None], k, v, mask, causal)  # (B, H, 1, D)
            y = y.view(B, H * D)  # one position: (h, d) order, no copy
            x = x + _rows(attention["wo"], y if y.dtype == x.dtype else y.to(x.dtype))
            gate, up = _rows(ffn["w13"], _rows(block._modules["ffn_norm"], x)).chunk(2, dim=-1)
            x = x + _rows(ffn["w2"], F.silu(gate).mul_(up))
        cache.advance(1)
        return _rows(self.output, _rows(self.norm, x)).view(B, 1, -1)  # (B, 1, V)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n
