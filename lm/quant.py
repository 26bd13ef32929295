"""Weights kept in a faster format for CPU inference: the GGUF's own 4-bit groups, int8, or bf16.

A decode step is one token per sequence, so each linear is a matrix-vector product bound by reading the
weights (measured on AMD Zen 4 with avx512_bf16/vnni, torch 2.13, 2 threads, weights not in cache):
- "int4" (the default): the block's linears keep 4-bit weights in groups of 32 with a scale and a zero per
  group, the layout of the GGUF's Q4_1, through `aten._weight_int4pack_mm_for_cpu` (bf16 activations). Q4_1's
  quantizer puts every group's minimum and maximum on its grid, so the groups recomputed from the dequantized
  file are the file's own: no error beyond the GGUF's. A one-row step's four linears took 94 us a layer against
  140 for the int8 kernels below (half the bytes), and the next-token KL divergence from the dequantized file,
  teacher-forced over 8 papers' openings, is 0.007 on one row and 0.013 on 8 (int8: 0.019 and 0.028). The
  kernel works on blocks of 4 rows, so 1-4 rows cost about the same (576->3072: 44-57 us) and 5-8 twice that;
  past INT4_MAX_ROWS (a prompt) an int8 copy is dequantized to bf16 for one bf16 matmul, compute-bound there.
- "int8": per-output-channel int8 (`aten._weight_int8pack_mm`, bf16 activations), re-quantized from the file.
- The head (576->49152, a fifth of a step's bytes) is int8 in both, through FBGEMM's dynamic int8 linear, which
  quantizes the activation row to 8 bits too and runs an int8 x int8 product with VNNI instructions (0.26 ms
  against 0.9 for int8pack and 0.57 for int4, one row). Its one activation scale per call fits every row because
  its input comes out of the final RMSNorm (each row has the same RMS). On the blocks' layers, whose inputs carry
  outlier channels, FBGEMM for 8 decode rows raised the KL to 0.064 (0.026 with SmoothQuant folded into the
  norms, which int4 then could not keep exact), and on a prompt's first positions more, so only decode rows of
  the head, and of w13 in "int8", go there (`VNNI_FROM_ROWS`).
- "bf16": bf16 weights everywhere. "fp32": unchanged.

Activations stay float32 between layers (residual stream, norms, softmax); only the inputs of the matmuls are
cast to bf16 and their outputs cast back. tests/integration/test_generate_real.py holds the measured logit
differences against fp32.

All of the above assumes a CPU that multiplies bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm). On
one without (an AVX2-only x86, such as an older EPYC), torch emulates bf16: a prompt's bf16 matmul runs several
times slower than the float32 one. There (`NATIVE_BF16` False) a prompt's rows multiply the int8 copy (or the
"bf16" weights) in float32 (bench/generate.py --bf16-kernels measures both ways). Decode rows keep their kernels:
int4's and int8's are about as fast as each other there, and int4 holds the file's own weights.

Our own kernels (lm.kernels, compiled once by `make kernels` on CPUs with AVX2, FMA and F16C) replace the aten
ones above for decode rows where their library loads: up to INT4_MAX_ROWS rows of the int4 layers (whose
out_features is a multiple of 32) and up to INT8PACK_MAX_ROWS of the int8 ones, the head included (FBGEMM keeps
the rows it takes on a VNNI CPU). They quantize each activation row to int8 per block of 32 inputs, as
llama.cpp's q8_0 does, and multiply bytes: the int4 layers' own 4-bit values and scales, rearranged per output
row on first use (Int4Linear.kernel_weights), or the int8 rows. Unlike the aten kernels they need no bf16, which
this kind of CPU emulates. The aten kernels stay the fallback (no library, a failed build, `LM_KERNELS=0`) and
the reference that tests/unit/test_kernels.py compares against; bench/kernels_quality.py measures the KL
divergence the activations' int8 rounding adds, bench/generate.py --kernels the speed.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm import kernels

MODES = ("int4", "int8", "bf16", "fp32")
# _weight_int8pack_mm is only used where it is both faster and correct: few rows (decode, short continuations)
# and an inner dimension that is a multiple of 32 (torch 2.13's CPU kernel returns garbage for K=8 or K=24).
INT8PACK_MAX_ROWS = 16
INT4_MAX_ROWS = 16  # beyond, the int4 kernel is slower than dequantizing the int8 copy (module docstring)
GROUP = 32  # int4 group size: Q4_1's block
# decode rows of these layers (one token per sequence) go through FBGEMM from this many rows (module docstring)
VNNI_FROM_ROWS = {"feed_forward.w13": 1, "output": 1}
VNNI_MAX_ROWS = 64
_decode_kernels: bool | None = None  # decode_kernels()'s answer once asked (use_kernels sets it)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (x86 "flags", Arm "Features"); empty when
    unknown, which makes every choice below take the kernels that are right on any CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "Features"))]
    except OSError:
        return set()
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or amx_bf16 on x86, bf16 on Arm);
    `LM_NATIVE_BF16=1` or `0` says so instead (for benchmarks and tests)."""
    forced = os.environ.get("LM_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & cpu_flags())


NATIVE_BF16 = native_bf16()  # read once: which kernels the layers below take (module docstring)


def vnni_available() -> bool:
    """FBGEMM's int8 kernels exist (x86 builds of torch) and the CPU has VNNI: without it FBGEMM multiplies
    with AVX2's 16-bit pairwise sums, which saturate, and the head's logits drift (tests/unit/test_quant.py)."""
    has_vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())
    return "fbgemm" in torch.backends.quantized.supported_engines and has_vnni


def decode_kernels() -> bool:
    """Whether decode rows go through lm.kernels: the library is built and loads, and `LM_KERNELS=0` is not set.
    Read once per process (the first decode step); use_kernels() changes it."""
    global _decode_kernels
    if _decode_kernels is None:
        _decode_kernels = kernels.load()
    return _decode_kernels


def use_kernels(enabled: bool) -> None:
    """Send decode rows through lm.kernels (built here if needed; RuntimeError where the CPU or the compiler
    cannot) or through torch's kernels: for tests and benchmarks that compare the two."""
    global _decode_kernels
    if enabled and not kernels.build_and_load():
        raise RuntimeError("lm.kernels could not be loaded (see the log)")
    _decode_kernels = enabled


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

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(R, in) float32 decode rows, one token per sequence -> (R, out) float32 (lm.model.Transformer.decode)."""
        if 0 < self.vnni_from <= x.shape[0] <= VNNI_MAX_ROWS and self.bias is None:
            return torch.ops.quantized.linear_dynamic(x, self._vnni_params(), False)
        return self._bf16_activations(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, in)
        one_token = x.dim() < 3 or x.shape[-2] == 1  # decode rows: (R, 1, in); a prompt's tokens are (1, T, in)
        y = self.rows(x2.float()) if one_token else self._bf16_activations(x2)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def _bf16_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(M, in) -> (M, out) float32: for few rows lm.kernels' int8 kernel where it is loaded, else the
        int8pack kernel; for many, one matmul with the per-channel scales applied to its output (one pass over
        the weight), in bf16 where the CPU multiplies bf16 in hardware and in float32 where it emulates it
        (NATIVE_BF16)."""
        if self.packable and x.shape[0] <= INT8PACK_MAX_ROWS and decode_kernels():
            return torch.ops.docent_kernels.int8_rows(x.float().contiguous(), self.weight, self.scales, self.bias)
        if self.packable and x.shape[0] <= INT8PACK_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight, self.scales)
        elif NATIVE_BF16:
            y = F.linear(x.to(torch.bfloat16), self.weight.to(torch.bfloat16)) * self.scales
        else:  # bf16 emulated: the float32 matmul is the fast one
            y = F.linear(x.float(), self.weight.float()) * self.scales.float()
        return y.float() if self.bias is None else y.float() + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int4Linear(Int8Linear):
    """The GGUF's 4-bit groups for up to INT4_MAX_ROWS rows, and an int8 copy (Int8Linear) for more.

    w = scale * (q - 8) + zero per group of GROUP inputs, q in 0..15: Q4_1's d * q + m with zero = m + 8 * d.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("q4", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("q4_scales", torch.empty(in_features // GROUP, out_features, 2, dtype=torch.bfloat16,
                                                      device=device))
        self._kernel_weights = None  # (q4, lm.kernels' copy of it), made on first use (not saved)

    @staticmethod
    def supports(in_features: int, out_features: int) -> bool:
        """The kernel's shape limits: whole groups of inputs, outputs in blocks of 16."""
        return in_features % GROUP == 0 and out_features % 16 == 0

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
        mod = super().from_float(weight, bias)
        q, scales_zeros = quantize_groups(weight)
        mod.q4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # (out, in / 2), the kernel's layout
        mod.q4_scales = scales_zeros
        return mod

    def kernel_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 4-bit weights in lm.kernels' layout (kernels.int4_layout), made from q4 once, remade if q4 was
        replaced (load_state_dict). A model loaded from the converted-weights cache maps q4 from the file, so
        the pages of q4 that only torch's kernel reads are never loaded."""
        if self._kernel_weights is None or self._kernel_weights[0] is not self.q4:
            self._kernel_weights = (self.q4, kernels.int4_layout(self.q4, self.q4_scales))
        return self._kernel_weights[1]

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > INT4_MAX_ROWS:
            return super().rows(x)
        # int4_rows works on whole blocks of 32 rows, unpacked from torch's packing where lm.kernels knows it
        if self.out_features % 32 == 0 and decode_kernels() and kernels.int4pack_block():
            return torch.ops.docent_kernels.int4_rows(x.contiguous(), *self.kernel_weights(), self.bias)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.q4, GROUP, self.q4_scales).float()
        return y if self.bias is None else y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > INT4_MAX_ROWS * self.in_features:
            return super().forward(x)
        return self.rows(x.reshape(-1, self.in_features).float()).to(x.dtype).view(*x.shape[:-1], self.out_features)


class BF16Linear(nn.Module):
    """A linear layer with bf16 weights that takes and returns the caller's dtype (float32 activations)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not NATIVE_BF16 and x.numel() > INT4_MAX_ROWS * self.weight.shape[1]:  # a prompt, bf16 emulated
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
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


def quantize_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> 4-bit q (out, in) int32 in 0..15 and (in / GROUP, out, 2) bf16 (scale, zero) per group:
    min/max over each group of GROUP inputs, as Q4_1's quantizer does, so weights that came from Q4_1 come back
    exactly (each group's minimum and maximum are on its grid)."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    groups = w.view(out_f, in_f // GROUP, GROUP)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((groups - low) / scale).clamp_(0, 15).to(torch.int32).view(out_f, in_f)
    zero = low + 8 * scale  # the kernel computes scale * (q - 8) + zero
    scales_zeros = torch.stack([scale.view(out_f, -1).t(), zero.view(out_f, -1).t()], dim=-1)
    return q, scales_zeros.to(torch.bfloat16).contiguous()


def _swap_linears(model: nn.Module, make) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, make(child))
        else:
            _swap_linears(child, make)


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str = "int4", vnni: bool | None = None) -> nn.Module:
    """Swap every nn.Linear of an lm.model.Transformer for a faster one, in place; returns the model.

    - "int4": Int4Linear for the blocks' linears (Int8Linear where a shape does not fit the kernel), an
      Int8Linear head on FBGEMM (untied from the embedding table, which is kept in bf16: a lookup of 576 numbers
      per token needs no speed, only memory);
    - "int8": Int8Linear everywhere, with FBGEMM for decode rows of w13 and the head;
    - "bf16": bf16 weights everywhere; a tied head keeps sharing the (bf16) embedding table;
    - "fp32": unchanged.
    FBGEMM is used where it is available (`vnni=None`) or when asked. Norm weights, RoPE tables and biases of
    the norms stay float32.
    """
    if mode not in MODES:
        raise ValueError(f"unknown weights format {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "fp32":
        return model
    tied = model.output.weight is model.tok_embeddings.weight
    head = model.output
    if mode == "bf16":
        _swap_linears(model, lambda lin: BF16Linear(lin.weight, lin.bias))
    else:
        def make(lin: nn.Linear) -> nn.Module:
            four = mode == "int4" and lin is not head and Int4Linear.supports(lin.in_features, lin.out_features)
            return (Int4Linear if four else Int8Linear).from_float(lin.weight, lin.bias)
        _swap_linears(model, make)
        use_vnni(model, vnni_available() if vnni is None else vnni)
    model.tok_embeddings = BF16Embedding(model.tok_embeddings.weight)
    if mode == "bf16" and tied:
        model.output.weight = model.tok_embeddings.weight  # one copy of the 49152 x 576 table, as before
    return model


def use_vnni(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Route decode rows of the VNNI_FROM_ROWS layers through FBGEMM (or every layer back to its own kernel)."""
    for name, mod in model.named_modules():
        if isinstance(mod, Int8Linear):
            layer = next((k for k in VNNI_FROM_ROWS if name == k or name.endswith("." + k)), None)
            four = isinstance(mod, Int4Linear)  # the int4 kernel is faster than FBGEMM at its row counts
            mod.vnni_from = VNNI_FROM_ROWS[layer] if enabled and layer and not four else 0
    return model


def weights_format(model: nn.Module) -> str:
    """"int4", "int8", "bf16" or "fp32": what quantize_model made of this model."""
    kinds = {type(m) for m in model.modules()}
    return ("int4" if Int4Linear in kinds else "int8" if Int8Linear in kinds else "bf16" if BF16Linear in kinds
            else "fp32")
