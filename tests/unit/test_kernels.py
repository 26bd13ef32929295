"""lm.kernels: our decode-row kernels, the AVX2 ones and the AVX-512 VNNI ones (where the CPU has it), against the
float64 product of the dequantized weights and against torch's kernels (lm.quant's fallback), and the fallback when
the library is missing or turned off.

Tolerance: both kernels quantize the activation rows to int8 per block of 32, which puts a relative error of
about 0.006 (norm of the difference / norm of the float64 product, random Gaussian inputs) on the outputs, and
torch's kernels, with bf16 activations, about 0.0025. The bound below is 0.02 against either.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lm import kernels, quant
from lm.model import KVCache
from lm.quant import GROUP, Int4Linear, Int8Linear, quantize_groups, quantize_model
from tests.unit.test_quant import tiny

pytestmark = pytest.mark.skipif(kernels.unsupported_reason() not in (None, "LM_KERNELS=0"),
                                reason="the kernels need AVX2, FMA and F16C")
TOL = 0.02
ROOT = Path(__file__).resolve().parents[2]
ROWS = [1, 2, 3, 5, 16]


VNNI_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # what decode.cpp's VNNI kernels need
NO_VNNI = "the CPU lacks AVX-512 VNNI (avx512f, avx512bw, avx512vl, avx512_vnni): only the AVX2 kernels run here"


@pytest.fixture(params=["avx2", "vnni"])
def kernels_on(request):
    """lm.quant with its decode kernels, built (once, cached) if `make kernels` has not, the AVX2 ones or the VNNI
    ones; restored afterwards."""
    vnni = request.param == "vnni"
    if vnni and not VNNI_FLAGS <= quant.cpu_flags():
        pytest.skip(NO_VNNI)
    before = quant._decode_kernels
    quant.use_kernels(True)
    assert kernels.use_vnni(vnni) is vnni
    yield request.param
    kernels.use_vnni(True)
    quant._decode_kernels = before


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).norm() / ref.norm()).item()


def int4_reference(lin: Int4Linear) -> torch.Tensor:
    """(out, in) float64: the weights Int4Linear holds, w = scale * (q - 8) + zero per group."""
    packed, sz = kernels.int4_layout(lin.q4, lin.q4_scales)  # (N, K / 2), (N, 2, G)
    nib = packed.view(lin.out_features, -1, 16)
    q4 = torch.cat([nib & 15, nib >> 4], -1).double()  # (N, G, 32): byte j holds q[j] and q[j + 16]
    scale, zero = sz.double().unbind(1)  # (N, G) each
    return (scale[..., None] * (q4 - 8) + zero[..., None]).view(lin.out_features, lin.in_features)


def assert_kernel_matches(lin: Int8Linear, x: torch.Tensor, ref: torch.Tensor) -> None:
    """lin's decode rows through the kernel are float32 (rows, out) and within TOL of the float64 product `ref` and
    of torch's kernel (the fallback, taken afterwards: the kernels_on fixture restores the switch)."""
    with torch.inference_mode():
        got = lin.rows(x)
        quant._decode_kernels = False
        fallback = lin.rows(x)
    assert got.shape == (x.shape[0], lin.out_features) and got.dtype == torch.float32
    assert rel(got, ref) < TOL and rel(got, fallback.double()) < TOL, (rel(got, ref), rel(got, fallback.double()))


def test_int4_layout_holds_the_groups_values():
    torch.manual_seed(0)
    w = torch.randn(96, 128)
    q, scales_zeros = quantize_groups(w)
    lin = Int4Linear.from_float(w)
    back = (q.view(96, -1, GROUP) - 8) * scales_zeros[..., 0].double().t()[..., None] \
        + scales_zeros[..., 1].double().t()[..., None]
    assert torch.equal(int4_reference(lin), back.view(96, 128))


def pack_in_blocks(q: torch.Tensor, block: int) -> torch.Tensor:
    """(N, K) values -> torch's int4 packing with blocks of `block` rows, as unpack_int4pack's docstring states it."""
    n, k = q.shape
    full = n // block * block
    parts = [(b[: block // 2].t() | (b[block // 2:].t() << 4)).reshape(-1) for b in q[:full].split(block)]
    if full < n:
        rest = q[full:]
        parts.append((rest[0::2].t() | (rest[1::2].t() << 4)).reshape(-1))  # (K, (N - full) / 2)
    return torch.cat(parts).view(n, k // 2)


@pytest.mark.parametrize("block", [32, 64])  # AVX2's layout and AVX-512's, whichever CPU runs the test
@pytest.mark.parametrize("n", [64, 96, 160])  # whole blocks, and a shorter last one
def test_unpack_int4pack_reads_both_vector_widths_layouts(block, n):
    q = torch.randint(0, 16, (n, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    assert torch.equal(kernels.unpack_int4pack(pack_in_blocks(q, block), block), q)


@pytest.mark.parametrize("n", [32, 96, 4864])
def test_unpack_int4pack_reads_torchs_packing_on_this_cpu(n):
    assert kernels.int4pack_block() in (32, 64), "torch packs int4 in a layout lm.kernels does not know"
    q = torch.randint(0, 16, (n, 128), dtype=torch.int32, generator=torch.Generator().manual_seed(n))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(kernels.unpack_int4pack(packed).to(torch.int32), q)


PACK_CHECK = """
import torch
from lm.kernels import int4pack_block, unpack_int4pack
print(int4pack_block())
for n in (16, 32, 48, 64, 96, 112, 160, 896) if int4pack_block() else ():
    q = torch.randint(0, 16, (n, 128), dtype=torch.int32)
    assert torch.equal(unpack_int4pack(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)), q.byte()), n
"""


@pytest.mark.parametrize("capability,block", [("avx2", 32), ("avx512", 64), ("default", 0)])
def test_unpack_int4pack_reads_torchs_layout_for_other_cpus(capability, block):
    """The packing torch does depends on the kernels it picked at startup (ATEN_CPU_CAPABILITY sets them, up to
    what the CPU has); a layout lm.kernels does not know (torch's default kernels pair neighbouring rows
    throughout) is found unknown, and int4 rows stay on torch's kernel."""
    if capability == "avx512" and "avx512f" not in quant.cpu_flags():
        pytest.skip("the CPU has no AVX-512")
    env = {"ATEN_CPU_CAPABILITY": capability, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PACK_CHECK], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(block)]


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", [(64, 896), (96, 4864), (32, 64)])  # (out, in): the 0.5B's K, and a tiny one
@pytest.mark.parametrize("bias", [False, True])
def test_int4_rows_match_the_dequantized_product_and_torchs_kernel(kernels_on, rows, shape, bias):
    torch.manual_seed(rows)
    n, k = shape
    lin = Int4Linear.from_float(torch.randn(n, k), torch.randn(n) if bias else None)
    x = torch.randn(rows, k)
    ref = x.double() @ int4_reference(lin).t() + (lin.bias.double() if bias else 0)
    assert_kernel_matches(lin, x, ref)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", [(64, 896), (96, 4864), (33, 64)])  # 33: an odd number of output channels
@pytest.mark.parametrize("bias", [False, True])
def test_int8_rows_match_the_dequantized_product_and_torchs_kernel(kernels_on, rows, shape, bias):
    torch.manual_seed(rows)
    n, k = shape
    lin = Int8Linear.from_float(torch.randn(n, k) * torch.logspace(-2, 0, n)[:, None], torch.randn(n) if bias else None)
    x = torch.randn(rows, k)
    ref = x.double() @ lin.dequantize(torch.float64).t() + (lin.bias.double() if bias else 0)
    assert_kernel_matches(lin, x, ref)


@pytest.mark.skipif(not VNNI_FLAGS <= quant.cpu_flags(), reason=NO_VNNI)
@pytest.mark.parametrize("rows", [1, 4, 7])
@pytest.mark.parametrize("k", [64, 96, 896])  # 96: an odd number of blocks, the last one outside the 512-bit pairs
def test_vnni_and_avx2_kernels_sum_the_same_integers(rows, k):
    """Neither kernel's integer sums saturate, so the two differ only in the order of their float additions."""
    quant.use_kernels(True)
    torch.manual_seed(k + rows)
    x = torch.randn(rows, k)
    four, eight = Int4Linear.from_float(torch.randn(64, k)), Int8Linear.from_float(torch.randn(33, k))
    try:
        with torch.inference_mode():
            for lin in (four, eight):
                assert kernels.use_vnni(True)
                vnni = lin.rows(x)
                assert not kernels.use_vnni(False)
                avx2 = lin.rows(x)
                assert rel(vnni, avx2.double()) < 1e-5
    finally:
        kernels.use_vnni(True)


def test_vnni_taken_exactly_where_the_cpu_has_it():
    quant.use_kernels(True)
    assert torch.ops.docent_kernels.vnni_supported() == (VNNI_FLAGS <= quant.cpu_flags())
    assert kernels.use_vnni(True) == torch.ops.docent_kernels.vnni_supported()


def test_lm_kernels_vnni_0_keeps_the_avx2_kernels(monkeypatch):
    quant.use_kernels(True)
    monkeypatch.setenv("LM_KERNELS_VNNI", "0")
    monkeypatch.setattr(kernels, "_loaded", None)
    try:
        assert kernels.load() and not kernels.vnni_taken()
    finally:
        kernels.use_vnni(True)
    assert kernels.vnni_taken() == (VNNI_FLAGS <= quant.cpu_flags())


def test_rows_past_the_kernels_bound_take_the_other_paths(kernels_on):
    lin = Int4Linear.from_float(torch.randn(64, 64))
    x = torch.randn(quant.INT4_MAX_ROWS + 1, 64)
    with torch.inference_mode():
        assert torch.equal(lin.rows(x), Int8Linear.rows(lin, x))


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_tiny_models_logits_with_and_without_the_kernels(kernels_on, mode):
    model = quantize_model(tiny(), mode)
    ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(1))
    steps = {}
    for on in (True, False):
        quant._decode_kernels = on
        with torch.inference_mode():
            cache = KVCache(model.config, batch_size=3, max_len=32)
            model(ids[:, :11], cache=cache)
            steps[on] = model(ids[:, 11:], cache=cache)[:, 0]  # three decode rows
    on, off = steps[True], steps[False]
    assert rel(on, off.double()) < TOL
    assert (on.argmax(-1) == off.argmax(-1)).all()


def test_missing_library_means_torchs_kernels_and_one_log_line(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(kernels, "KERNELS_DIR", tmp_path)  # nothing built there
    monkeypatch.setattr(kernels, "_loaded", None)
    with caplog.at_level(logging.INFO, logger="lm.kernels"):
        assert kernels.load() is False and kernels.load() is False
    assert [r.getMessage() for r in caplog.records] == ["decode kernels off, using torch's: not built (make kernels)"]


def test_lm_kernels_0_turns_them_off(monkeypatch):
    monkeypatch.setenv("LM_KERNELS", "0")
    monkeypatch.setattr(kernels, "_loaded", None)
    assert kernels.load() is False
    monkeypatch.setattr(quant, "_decode_kernels", None)
    lin = Int4Linear.from_float(torch.randn(64, 64))
    x = torch.randn(2, 64)
    with torch.inference_mode():
        want = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), lin.q4, GROUP, lin.q4_scales).float()
        assert torch.equal(lin.rows(x), want)


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/c++"])  # one that fails, and none at all
def test_a_failed_build_raises_with_the_compilers_words(monkeypatch, tmp_path, compiler):
    monkeypatch.setattr(kernels, "KERNELS_DIR", tmp_path)
    monkeypatch.setenv("CXX", compiler)
    with pytest.raises(RuntimeError, match="failed to compile"):
        kernels.build()
    assert not list(tmp_path.rglob("*.so*"))  # no half-written library left behind


def test_nn_linear_swapped_keeps_its_kernel_weights_in_step_with_q4(kernels_on):
    lin = Int4Linear.from_float(nn.Linear(64, 32).weight)
    first = lin.kernel_weights()
    assert lin.kernel_weights() is first
    lin.q4 = lin.q4.clone()  # what load_state_dict(assign=True) does
    assert lin.kernel_weights() is not first
