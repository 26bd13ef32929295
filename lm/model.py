"""A Llama-family decoder in one file: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied head.

The other families docent loads are config flags on the same decoder (lm/config.py): qwen2's q/k/v biases;
qwen3's per-head q/k RMSNorm and a head_dim that is not dim / n_heads; gemma2/3's scaled embeddings, GeGLU,
post-attention and post-FFN norms, query scale, attention and final logit soft-capping, and sliding-window
(local) layers with their own RoPE base; llama3's and phi3's RoPE frequency factors. llama.cpp's converter has
already folded gemma's RMSNorm (1 + w) into the weights, so every norm here is a plain w * x / rms(x).

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
from functools import partial

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


def rope_tables(head_dim: int, max_len: int, theta: float, factors: Sequence[float] | None = None,
                scale: float = 1.0, attn_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables, (max_len, head_dim), in the rotate-half layout of HF Llama, with rotate-half's sign folded
    into the sine: (-sin, +sin) over the two halves (see apply_rope).

    factors (head_dim / 2): each frequency divided by its factor (llama3's rope_freqs, phi3's longrope factors);
    scale: linear scaling, positions / scale; attn_factor multiplies both tables (phi3's longrope)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if factors is not None:
        inv_freq = inv_freq / torch.tensor(list(factors), dtype=torch.float64)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float64) / scale, inv_freq)  # (L, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, D)
    sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1)
    return (emb.cos() * attn_factor).float(), (sin * attn_factor).float()


def window_mask(T: int, S: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S) bool, True where the i-th of T new queries (position S - T + i) may see key j: causal and within the
    last `window` positions, itself included (j > S - T + i - window)."""
    query = torch.arange(S - T, S, device=device)[:, None]
    keys = torch.arange(S, device=device)[None, :]
    return (keys <= query) & (keys > query - window)


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
        self._window_mask: tuple[tuple[int, int, int], torch.Tensor] | None = None  # the same for local layers
        self._layers = tuple(zip(self.k.unbind(0), self.v.unbind(0), strict=True))  # per-layer views, made once

    @classmethod
    def over(cls, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor], pos: int) -> KVCache:
        """A cache that writes into existing tensors, one (B, KV, capacity, D) per layer (views of a larger store),
        with `pos` positions filled."""
        cache = cls.__new__(cls)
        cache.max_len, cache.pos, cache._mask, cache._window_mask = k[0].shape[2], pos, None, None
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

    def mask(self, T: int, window: int = 0) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for T new queries after self.pos cached keys; window > 0: a local layer's, whose
        queries see only the last `window` positions."""
        if window and self.pos + T > window:  # some key is out of some query's window
            key = (self.pos, T, window)
            if self._window_mask is None or self._window_mask[0] != key:
                self._window_mask = (key, window_mask(T, self.pos + T, window, self._layers[0][0].device))
            return self._window_mask[1], False
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


def softcap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
                      cap: float) -> torch.Tensor:
    """cached_attention's math with the scores soft-capped, cap * tanh(scores / cap), before the mask and softmax
    (gemma2), which SDPA cannot do: the scores are written out, in float32. q (B, H, T, D), k/v (B, KV, S, D)."""
    H, T, D, KV, S = q.shape[1], q.shape[2], q.shape[3], k.shape[1], k.shape[2]
    keys, values = k.float().repeat_interleave(H // KV, dim=1), v.float().repeat_interleave(H // KV, dim=1)
    scores = torch.tanh(q.float() @ keys.transpose(-1, -2) * (D ** -0.5 / cap)) * cap  # (B, H, T, S)
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, dim=-1) @ values  # (B, H, T, D)


def attention_kernel(cfg: ModelConfig):
    """cached_attention, or softcap_attention with the config's cap."""
    return partial(softcap_attention, cap=cfg.attn_softcap) if cfg.attn_softcap else cached_attention


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, qkv_out, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        if cfg.qk_norm:  # over each head's D values, before RoPE
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = cfg.sliding_window if cfg.is_local(layer) else 0  # 0 = a global layer
        # queries pre-multiplied so that the kernels' 1/sqrt(D) gives the config's scale
        self.q_mult = cfg.query_scale * cfg.head_dim ** 0.5 if cfg.query_scale else 1.0
        self.softcap = cfg.attn_softcap
        self.attend = attention_kernel(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(B, T, H + 2 * KV, D)
        qk = qkv[:, :, :H + KV]
        if self.qk_norm:
            qk = torch.cat([self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])], dim=2)
        # rotate the q and k heads in one go (half the small ops of a decode step's RoPE)
        qk = apply_rope(qk, cos, sin)  # (B, T, H+KV, D)
        q = qk[:, :, :H].transpose(1, 2)  # (B, H, T, D)
        if self.q_mult != 1.0:
            q = q * self.q_mult
        k = qk[:, :, H:].transpose(1, 2)  # (B, KV, T, D)
        v = qkv[:, :, H + KV:].transpose(1, 2)  # (B, KV, T, D)
        if cache is None:
            local = self.window and T > self.window
            mask, causal = (window_mask(T, T, self.window, x.device), False) if local else (None, True)
            if self.softcap:
                y = self.attend(q, k, v, mask, causal).to(x.dtype)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True,
                                                   dropout_p=self.dropout if self.training else 0.0)
        else:
            k, v = cache.update(self.layer, k, v)  # (B, KV, S, D): every key this query may see, and padding
            mask, causal = cache.mask(T, self.window)
            y = self.attend(q, k, v, mask, causal).to(x.dtype)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * D))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden = cfg.hidden_dim
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)  # gate and up, fused
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)  # down
        self.act = F.silu if cfg.activation == "silu" else gelu_tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(self.act(gate).mul_(up))  # in place: the activation's output is a new tensor


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)
        if cfg.post_norms:  # gemma: the sublayers' outputs are normalised before the residual add
            self.post_attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.post_ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.post_norms = cfg.post_norms
        self.local_rope = cfg.is_local(layer) and bool(cfg.rope_local_theta)  # uses the local RoPE tables

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        h = self.attention(self.attention_norm(x), cos, sin, cache)
        x = x + (self.post_attention_norm(h) if self.post_norms else h)
        h = self.feed_forward(self.ffn_norm(x))
        return x + (self.post_ffn_norm(h) if self.post_norms else h)


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
        self.init_rope()

    def init_rope(self) -> None:
        """(Re)compute the RoPE tables from the config (its max_seq_len may have changed): rope_cos/rope_sin, and
        rope_cos_local/rope_sin_local where local layers have their own base (gemma3)."""
        c = self.config
        tables = {"": rope_tables(c.head_dim, c.max_seq_len, c.rope_theta, c.rope_freq_factors, c.rope_scale,
                                  c.rope_attn_factor)}
        if c.rope_local_theta:
            tables["_local"] = rope_tables(c.head_dim, c.max_seq_len, c.rope_local_theta)
        for suffix, (cos, sin) in tables.items():
            self.register_buffer("rope_cos" + suffix, cos, persistent=False)
            self.register_buffer("rope_sin" + suffix, sin, persistent=False)

    def _ropes(self, cache: KVCache | None, T: int) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        """{local: (cos, sin)} rows for the T new positions: (T, 1, D), or (B, T, 1, D) from a SlotBatch."""
        out = {}
        for local, suffix in ((False, ""), (True, "_local")):
            if local and not self.config.rope_local_theta:
                out[True] = out[False]
                break
            cos, sin = getattr(self, "rope_cos" + suffix), getattr(self, "rope_sin" + suffix)
            out[local] = (cos[:T, None], sin[:T, None]) if cache is None else cache.rope(cos, sin, T)
        return out

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
        if cache is None and T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context of {self.config.max_seq_len}")
        ropes = self._ropes(cache, T)  # (T, 1, D) each
        x = self.tok_embeddings(idx)  # (B, T, C)
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
        for block in self.layers:
            x = block(x, *ropes[block.local_rope], cache)
        if cache is not None:
            cache.advance(T)
            x = x[:, -1:]  # only the last position's logits are needed to generate
        x = self.norm(x)
        logits = self.softcap_logits(self.output(x))  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    def softcap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.final_softcap
        return logits if not cap else torch.tanh(logits / cap) * cap

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
        cfg = self.config
        H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        ropes = {local: (cos.view(-1, 1, D), sin.view(-1, 1, D))  # against (B, heads, D)
                 for local, (cos, sin) in self._ropes(cache, 1).items()}  # (1, 1, D) or (B, 1, 1, D) each
        masks = {0: cache.mask(1)}  # window -> (mask, causal)
        attend = attention_kernel(cfg)
        x = self.tok_embeddings.forward(idx).view(B, -1)  # (B, C)
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale
        for i, block in enumerate(self.layers):
            # submodules straight from the module dicts: nn.Module.__getattr__ costs ~0.5 us a lookup, 20 a layer
            attention, ffn = block._modules["attention"]._modules, block._modules["feed_forward"]._modules
            layer = block._modules["attention"]
            qkv = _rows(attention["wqkv"], _rows(block._modules["attention_norm"], x)).view(B, H + 2 * KV, D)
            qk = qkv[:, :H + KV]
            if layer.qk_norm:
                qk = torch.cat([_rows(attention["q_norm"], qk[:, :H]), _rows(attention["k_norm"], qk[:, H:])], dim=1)
            qk = apply_rope(qk, *ropes[block.local_rope])  # (B, H+KV, D)
            k, v = cache.update(i, qk[:, H:, None], qkv[:, H + KV:, None])  # written as (B, KV, 1, D)
            if layer.window not in masks:
                masks[layer.window] = cache.mask(1, layer.window)
            q = qk[:, :H, None] if layer.q_mult == 1.0 else qk[:, :H, None] * layer.q_mult
            y = attend(q, k, v, *masks[layer.window])  # (B, H, 1, D)
            y = y.view(B, H * D)  # one position: (h, d) order, no copy
            h = _rows(attention["wo"], y if y.dtype == x.dtype else y.to(x.dtype))
            x = x + (_rows(block._modules["post_attention_norm"], h) if block.post_norms else h)
            gate, up = _rows(ffn["w13"], _rows(block._modules["ffn_norm"], x)).chunk(2, dim=-1)
            h = _rows(ffn["w2"], block._modules["feed_forward"].act(gate).mul_(up))
            x = x + (_rows(block._modules["post_ffn_norm"], h) if block.post_norms else h)
        cache.advance(1)
        return self.softcap_logits(_rows(self.output, _rows(self.norm, x))).view(B, 1, -1)  # (B, 1, V)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
        return n
