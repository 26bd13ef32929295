"""Weights kept in a faster format for CPU inference: int8 weight-only, or bf16.

Why int8 (measured on AMD Zen 4 with avx512_bf16/vnni, torch 2.13, batch size 1): a decode step is one
token, so each linear is a matrix-vector product bound by reading the weights. `aten._weight_int8pack_mm`
(int8 weights, per-output-channel scales, bf16 activations) reads a quarter of the bytes of fp32 and is
2-5x faster than an fp32 `F.linear` (576->1536: 33 us vs 73 us; the 576->49152 head: 2.4 ms vs 13.6 ms).
A prefill is a real matrix-matrix product, where that kernel is no faster than fp32 but a bf16 `F.linear` is
~3x faster, so for T > 1 the int8 weights are dequantized to bf16 on the fly (a few hundred microseconds per
layer against tens of milliseconds of matmul) instead of keeping a second bf16 copy in memory.

The GGUF weights are already 4-bit (Q4_1), so re-quantizing them to 8 bits per output channel loses little:
see tests/integration/test_generate_real.py for the measured logit differences.

Activations stay float32 between layers (residual stream, norms, softmax, KV cache); only the inputs of the
matmuls are cast to bf16 and their outputs cast back.

Faster still for one token: FBGEMM's dynamic int8 linear quantizes the activation row to 8 bits too and runs
an int8 x int8 product with VNNI instructions (576->3072: 47 us vs 99 us; the head: 0.94 ms vs 4.3 ms, 1 thread).
Its per-tensor activation scale is too coarse where activations have outliers: measured on SmolLM2 against
fp32, routing every linear through it dropped next-token top-1 agreement to 0.88 on one of three prompts
(max logit error 5.1), while keeping the attention input (wqkv) and the SwiGLU output (w2) on the
bf16-activation kernel restored 1.0 agreement and a max error of 1.6 (int8pack alone: 1.35) at 2.7x its
decode speed. So `VNNI_LAYERS` names where it is used.

A batch of decode rows (lm.serve) takes the same FBGEMM path with each row first scaled to the same peak, so
that the one activation scale fits every row (per-row scales in effect) and a quiet row is not quantized by a
loud one's range: `_weight_int8pack_mm` costs grow with the rows (576->3072 at 8 rows: 106 us against 32 us).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("int8", "bf16", "fp32")
# _weight_int8pack_mm is only used where it is both faster and correct: few rows (decode, short continuations)
# and an inner dimension that is a multiple of 32 (torch 2.13's CPU kernel returns garbage for K=8 or K=24).
INT8PACK_MAX_ROWS = 16
VNNI_LAYERS = ("attention.wo", "feed_forward.w13", "output")  # see the module docstring for why these


def vnni_available() -> bool:
    """FBGEMM's int8 kernels exist on x86 builds of torch (with VNNI on CPUs that have it)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    """y = x @ (w_int8 * scale).T + b, with symmetric per-output-channel scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.bfloat16, device=device))
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)
        self.packable = in_features % 32 == 0
        self.vnni = False  # one-row inputs go through FBGEMM's dynamic int8 x int8 linear
        self._packed = None  # FBGEMM's packed copy of the weight, made on first use (not saved)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """Quantize a float weight (out, in): scale = max|w| / 127 per row, rounded to nearest."""
        out_f, in_f = weight.shape
        mod = cls(in_f, out_f, bias=bias is not None)
        w, s = quantize_per_channel(weight)
        mod.weight, mod.scales = w, s
        if bias is not None:
            mod.bias = bias.detach().float().clone()
        return mod

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]  # (out, in)

    def _vnni_params(self):
        if self._packed is None:
            scales = self.scales.float()
            with warnings.catch_warnings():  # torch.ao's eager-quantization deprecation notice; the ops stay
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(self.weight.float() * scales[:, None], scales,
                                                torch.zeros(self.out_features, dtype=torch.long), 0, torch.qint8)
                self._packed = torch.ops.quantized.linear_prepack(qw, None if self.bias is None else self.bias.float())
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.numel() // self.in_features
        if self.vnni and rows == 1:  # one token: decode
            y = torch.ops.quantized.linear_dynamic(x.reshape(1, -1).float(), self._vnni_params(), False)
            return y.to(x.dtype).view(*shape[:-1], self.out_features)
        if self.vnni and rows <= INT8PACK_MAX_ROWS and self.bias is None:  # a batch of decode rows
            # FBGEMM quantizes its whole input with one scale; rows scaled to the same peak first share it
            # fairly (each row keeps its own resolution), and the output rows are scaled back
            x2 = x.reshape(rows, self.in_features).float()
            peak = x2.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)  # (M, 1)
            y = torch.ops.quantized.linear_dynamic(x2 / peak, self._vnni_params(), False) * peak
            return y.to(x.dtype).view(*shape[:-1], self.out_features)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, in)
        if self.packable and x2.shape[0] <= INT8PACK_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scales)  # (M, out) bf16
        else:
            y = F.linear(x2, self.dequantize(torch.bfloat16))
        y = y.to(x.dtype) if self.bias is None else y.to(x.dtype) + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BF16Linear(nn.Module):
    """A linear layer with bf16 weights that takes and returns the caller's dtype (float32 activations)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


class BF16Embedding(nn.Module):
    """The token table in bf16 (half the memory); rows come out float32 for the residual stream."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight).float()  # (B, T, C)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 (out, in) and bf16 scales (out,), symmetric, round to nearest.

    The scale is rounded to bf16 BEFORE dividing so that the kernel's bf16 scale is exactly the one the
    integers were computed against.
    """
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(torch.bfloat16)  # (out,)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scales


def _swap_linears(model: nn.Module, make) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, make(child))
        else:
            _swap_linears(child, make)


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int8", vnni: bool | None = None) -> nn.Module:
    """Swap every nn.Linear of an lm.model.Transformer for an int8 or bf16 one, in place; returns the model.

    - "int8": Int8Linear everywhere, the head included (untied from the embedding table, which is kept
      in bf16: a lookup of 576 numbers per token needs no speed, only memory); the VNNI_LAYERS decode one
      token with FBGEMM where it is available (`vnni=None`) or when asked;
    - "bf16": bf16 weights everywhere; a tied head keeps sharing the (bf16) embedding table;
    - "fp32": unchanged.
    Norm weights, RoPE tables and biases of the norms stay float32.
    """
    if mode not in MODES:
        raise ValueError(f"unknown weights format {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "fp32":
        return model
    tied = model.output.weight is model.tok_embeddings.weight
    make = Int8Linear.from_float if mode == "int8" else BF16Linear
    _swap_linears(model, lambda lin: make(lin.weight, lin.bias))
    model.tok_embeddings = BF16Embedding(model.tok_embeddings.weight)
    if mode == "int8":
        use_vnni(model, vnni_available() if vnni is None else vnni)
    if mode == "bf16" and tied:
        model.output.weight = model.tok_embeddings.weight  # one copy of the 49152 x 576 table, as before
    return model


def use_vnni(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Route one-token matmuls of the VNNI_LAYERS through FBGEMM (or back to the bf16-activation kernel)."""
    for name, mod in model.named_modules():
        if isinstance(mod, Int8Linear):
            mod.vnni = enabled and name.endswith(VNNI_LAYERS)
    return model


def weights_format(model: nn.Module) -> str:
    """"int8", "bf16" or "fp32": what quantize_model made of this model."""
    kinds = {type(m) for m in model.modules()}
    return "int8" if Int8Linear in kinds else "bf16" if BF16Linear in kinds else "fp32"
