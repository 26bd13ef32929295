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

FBGEMM's dynamic int8 linear quantizes the activations to 8 bits too and runs an int8 x int8 product with VNNI
instructions. It has a fixed cost (quantizing the input, ~5-15 us) but grows slowly with the rows, where the
int8pack kernel's cost grows with every row (2 threads, 8 rows: 576->960 27 us against 45; 576->3072 57 against
168; the head 1.2 ms against 2.5), so `VNNI_FROM_ROWS` sends each layer there from the row count at which it wins:
the head and w13 always, wqkv and wo from 4 rows. Only decode rows (one token per sequence) go there: on a
prompt's tokens, where the first positions carry the model's largest activations, FBGEMM's 8-bit activations
raised the KL divergence from fp32 of a 42-token prefill from 0.011 to 0.045 (0.029 with rows scaled).
FBGEMM quantizes its whole input with one scale, which is too coarse where some input channels carry outliers:
routing every linear through it dropped next-token top-1 agreement with fp32 from 0.82 to 0.76 on 8 rows of
decoding (KL 0.026 -> 0.064). Two measures keep it at the int8pack kernel's accuracy:
- SmoothQuant (`smooth`, Xiao et al. 2023): each input channel j of wqkv, w13 and wo is divided by
  s_j = max|x_j|^0.5 / max|W_j|^0.5 (activation maxima from a calibration text) and the weight's column multiplied
  by it. The division is folded into the weights before (the RMSNorm weight, or V's rows for wo), so it costs
  nothing at run time. w2's input (SwiGLU's product) keeps outliers even then (KL 0.038), so w2 stays on int8pack.
- Rows of different scales: the input of wqkv, w13 and the head comes out of an RMSNorm, so every row already has
  the same RMS; wo's rows are first scaled to the same peak (`ROW_SCALED`), so a quiet row is not quantized by a
  loud one's range.
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
# the row count from which each layer runs on FBGEMM (see the module docstring); w2 never does
VNNI_FROM_ROWS = {"attention.wqkv": 4, "feed_forward.w13": 1, "output": 1}
VNNI_MAX_ROWS = 64
SMOOTH_ALPHA = 0.5


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
        self.vnni_from = 0  # decode inputs of this many rows or more (up to VNNI_MAX_ROWS) go through FBGEMM; 0 = never
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
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        rows = x2.shape[0]
        one_token = x.dim() < 3 or shape[-2] == 1  # decode rows: (R, 1, in); a prompt's tokens are (1, T, in)
        if one_token and 0 < self.vnni_from <= rows <= VNNI_MAX_ROWS and self.bias is None:
            y = torch.ops.quantized.linear_dynamic(x2.float(), self._vnni_params(), False)  # (M, out) float32
        elif self.packable and rows <= INT8PACK_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight, self.scales)  # (M, out) bf16
        else:  # many rows: a bf16 matmul, the per-channel scales applied to its output (one pass over the weight)
            y = F.linear(x2.to(torch.bfloat16), self.weight.to(torch.bfloat16)) * self.scales
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
def quantize_model(model: nn.Module, mode: str = "int8", vnni: bool | None = None,
                   calibration: list[int] | None = None) -> nn.Module:
    """Swap every nn.Linear of an lm.model.Transformer for an int8 or bf16 one, in place; returns the model.

    - "int8": Int8Linear everywhere, the head included (untied from the embedding table, which is kept
      in bf16: a lookup of 576 numbers per token needs no speed, only memory); the VNNI_FROM_ROWS layers use
      FBGEMM where it is available (`vnni=None`) or when asked, after SmoothQuant on the `calibration` token ids
      when they are given (a Transformer's; see the module docstring);
    - "bf16": bf16 weights everywhere; a tied head keeps sharing the (bf16) embedding table;
    - "fp32": unchanged.
    Norm weights, RoPE tables and biases of the norms stay float32.
    """
    if mode not in MODES:
        raise ValueError(f"unknown weights format {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "fp32":
        return model
    vnni = vnni_available() if vnni is None else vnni
    if mode == "int8" and vnni and calibration:
        smooth(model, calibration)
    tied = model.output.weight is model.tok_embeddings.weight
    make = Int8Linear.from_float if mode == "int8" else BF16Linear
    _swap_linears(model, lambda lin: make(lin.weight, lin.bias))
    model.tok_embeddings = BF16Embedding(model.tok_embeddings.weight)
    if mode == "int8":
        use_vnni(model, vnni)
    if mode == "bf16" and tied:
        model.output.weight = model.tok_embeddings.weight  # one copy of the 49152 x 576 table, as before
    return model


def use_vnni(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Route the VNNI_FROM_ROWS layers through FBGEMM from their row counts (or every layer back to int8pack)."""
    for name, mod in model.named_modules():
        if isinstance(mod, Int8Linear):
            layer = next((k for k in VNNI_FROM_ROWS if name == k or name.endswith("." + k)), None)
            mod.vnni_from = VNNI_FROM_ROWS[layer] if enabled and layer else 0
    return model


# ---------------------------------------------------------------------------------------------- SmoothQuant

# A few lines of the kinds of text the bot sees (chat, numbers, names, code, a document), to find each linear
# layer's input channels that carry outliers; outlier channels are a property of the model, not of the text.
CALIBRATION_CHAT = [
    {"role": "system", "content": "You are a helpful assistant. Answer from the documents when you can."},
    {"role": "user", "content": "The committee met on Tuesday, 14 March 2023, to review the budget. Revenue rose "
                                "12% to $4.3 million while costs fell. Dr. Maria Lopez reported that 87 of 120 "
                                "patients improved in the trial (p < 0.05). What changed, and who reported it?"},
    {"role": "assistant", "content": "Revenue grew by 12% to $4.3 million, and Dr. Maria Lopez reported that 87 of "
                                     "120 patients improved."},
    {"role": "user", "content": "Write a Python function that adds two numbers.\n\ndef add(a, b):\n    return a + b"},
    {"role": "assistant", "content": "Here it is: `def add(a, b): return a + b`. Paris is the capital of France."},
]


@torch.no_grad()
def input_peaks(model: nn.Module, ids: list[int]) -> dict[str, torch.Tensor]:
    """max |x_j| over the calibration tokens of every nn.Linear's input channels, by module name."""
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_mod, inputs, _out):
            x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).amax(0)  # (in,)
            peaks[name] = torch.maximum(peaks[name], x) if name in peaks else x
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        model(torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    return peaks


def _smoothing(x_peak: torch.Tensor, w_peak: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factor s = max|x|^alpha / max|W|^(1-alpha)."""
    return (x_peak.clamp(min=1e-5) ** alpha / w_peak.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth(model: nn.Module, ids: list[int], alpha: float = SMOOTH_ALPHA) -> nn.Module:
    """Fold SmoothQuant factors into a float lm.model.Transformer, in place: the inputs of wqkv and w13 lose their
    outlier channels and the same outputs come out (see the module docstring). `ids`: calibration tokens."""
    peaks = input_peaks(model, list(ids)[:model.config.max_seq_len])
    for i, block in enumerate(model.layers):
        for norm, lin, name in ((block.attention_norm, block.attention.wqkv, "attention.wqkv"),
                                (block.ffn_norm, block.feed_forward.w13, "feed_forward.w13")):
            s = _smoothing(peaks[f"layers.{i}.{name}"], lin.weight.abs().amax(0), alpha)  # (dim,)
            norm.weight.data = norm.weight / s  # new tensors: the loaded ones may be read-only mmaps
            lin.weight.data = lin.weight * s
    return model


def weights_format(model: nn.Module) -> str:
    """"int8", "bf16" or "fp32": what quantize_model made of this model."""
    kinds = {type(m) for m in model.modules()}
    return "int8" if Int8Linear in kinds else "bf16" if BF16Linear in kinds else "fp32"
