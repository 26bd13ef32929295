"""lm.quant: int4 / int8 / bf16 weight formats on single layers and on a tiny random Transformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lm import quant
from lm.config import ModelConfig
from lm.model import KVCache, Transformer
from lm.quant import (
    GROUP,
    BF16Linear,
    Int4Linear,
    Int8Linear,
    quantize_groups,
    quantize_model,
    quantize_per_channel,
    vnni_available,
    weights_format,
)


def test_per_channel_quantization_round_trips_within_half_a_step():
    w = torch.randn(48, 64) * torch.logspace(-2, 1, 48)[:, None]  # rows of very different magnitudes
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (48,) and q.abs().max() <= 127
    err = (q.float() * s.float()[:, None] - w).abs()
    assert (err <= s.float()[:, None] * 0.5 + 1e-7).all()  # rounding error only, per row's own step


@pytest.mark.parametrize("rows", [1, 5, 40])  # the int8pack kernel (few rows) and the dequantize path (many)
@pytest.mark.parametrize("in_features", [64, 40])  # 40: not a multiple of 32, always the dequantize path
def test_int8_linear_is_close_to_fp32(rows, in_features):
    torch.manual_seed(0)
    lin = nn.Linear(in_features, 96, bias=True)
    q = Int8Linear.from_float(lin.weight, lin.bias)
    x = torch.randn(2, rows, in_features)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    rel = (out - ref).abs().max() / ref.abs().max()
    assert rel < 0.02, rel  # int8 weights + bf16 activations: ~1% of the output range
    # and the error is not a constant offset: every output feature tracks the reference
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.999


def test_a_prompts_rows_multiply_in_float32_where_bf16_is_emulated(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=True)
    q = Int8Linear.from_float(lin.weight, lin.bias)
    x = torch.randn(1, 40, 64)  # a prompt's rows: past the int8pack kernel
    with torch.no_grad():
        monkeypatch.setattr(quant, "NATIVE_BF16", True)
        in_bf16 = q(x)
        monkeypatch.setattr(quant, "NATIVE_BF16", False)
        in_fp32 = q(x)
        exact = x @ q.dequantize(torch.float32).T + lin.bias  # the int8 weights, multiplied in float32
    assert torch.allclose(in_fp32, exact, atol=1e-5)
    assert not torch.equal(in_fp32, in_bf16) and (in_fp32 - in_bf16).abs().max() < 0.02 * exact.abs().max()
    b16 = BF16Linear(lin.weight, lin.bias)  # "bf16" weights: kept in bf16, a prompt multiplied in float32
    with torch.no_grad():
        stored = x @ b16.weight.float().T + b16.bias.float()
        assert torch.allclose(b16(x), stored, atol=1e-5)


def test_cpu_flags_say_whether_bf16_is_native(monkeypatch):
    monkeypatch.setenv("LM_NATIVE_BF16", "0")
    assert quant.native_bf16() is False
    monkeypatch.setenv("LM_NATIVE_BF16", "1")
    assert quant.native_bf16() is True


def test_bf16_linear_is_close_to_fp32():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(3, 64)
    with torch.no_grad():
        rel = (BF16Linear(lin.weight)(x) - lin(x)).abs().max() / lin(x).abs().max()
    assert rel < 0.02


def tiny() -> Transformer:
    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=64)
    return Transformer(cfg).init_weights(seed=0).eval()


@pytest.mark.parametrize("mode", ["int4", "int8", "bf16"])
def test_quantized_tiny_model_logits_are_close_to_fp32(mode):
    ref_model, model = tiny(), tiny()
    quantize_model(model, mode)
    assert weights_format(model) == mode and weights_format(ref_model) == "fp32"
    n_lin = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert n_lin == 0  # every linear was swapped
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(ids)
        full = model(ids)  # (1, 20, V) through the many-rows path
        cache = KVCache(model.config, max_len=64)
        model(ids[:, :19], cache=cache)
        step = model(ids[:, 19:], cache=cache)  # the decode path (one row)
    for out in (full[:, -1], step[:, 0]):
        rel = (out - ref[:, -1]).abs().max() / ref[:, -1].abs().max()
        assert rel < 0.05, (mode, rel)
    assert (full.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_tied_head_stays_tied_in_bf16_and_gets_its_own_int8_copy():
    m = quantize_model(tiny(), "bf16")
    assert m.output.weight is m.tok_embeddings.weight and m.output.weight.dtype == torch.bfloat16
    m8 = quantize_model(tiny(), "int8")
    assert m8.output.weight.dtype == torch.int8 and m8.tok_embeddings.weight.dtype == torch.bfloat16


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown weights format 'int2'"):
        quantize_model(tiny(), "int2")


def q4_1(weight: torch.Tensor) -> torch.Tensor:
    """What a GGUF Q4_1 file holds for `weight`, dequantized (ggml's reference quantizer: per block of 32,
    d = (max - min) / 15 and m = min in fp16, q = round((w - m) / d))."""
    out_f, in_f = weight.shape
    blocks = weight.view(out_f, in_f // 32, 32)
    m = blocks.amin(-1, keepdim=True).half().float()
    d = ((blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / 15).half().float()
    q = torch.round((blocks - m) / d).clamp(0, 15)
    return (q * d + m).view(out_f, in_f)


def test_int4_groups_give_back_weights_that_came_from_q4_1():
    """The int4 format recomputes each group's scale and zero from the dequantized GGUF: for Q4_1 weights, the
    layer computes with exactly the file's weights (up to bf16 scales), unlike a per-channel int8 re-quantization."""
    torch.manual_seed(0)
    w = q4_1(torch.randn(64, 128) * torch.logspace(-2, 0, 64)[:, None])
    q, scales_zeros = quantize_groups(w)
    scale, zero = scales_zeros.float().unbind(-1)  # (in / GROUP, out) each
    back = (q.view(64, -1, GROUP) - 8) * scale.t()[:, :, None] + zero.t()[:, :, None]
    assert (back.view(64, 128) - w).abs().max() <= 0.01 * w.abs().max()  # bf16 rounding of scale and zero only
    lin4, lin8 = Int4Linear.from_float(w), Int8Linear.from_float(w)
    x = torch.randn(3, 128)
    with torch.inference_mode():
        ref = x @ w.t()
        err4, err8 = ((lin(x) - ref).abs().max().item() for lin in (lin4, lin8))
    assert err4 < 0.02 * ref.abs().max() and err4 < err8, (err4, err8)


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def bf16_in_hardware(request, monkeypatch):
    """Both kernel choices, whatever this CPU has (lm.quant.NATIVE_BF16)."""
    monkeypatch.setattr(quant, "NATIVE_BF16", request.param)
    return request.param


def test_int4_layer_takes_its_kernel_for_few_rows_and_the_int8_copy_for_many(bf16_in_hardware):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=True)
    with torch.no_grad():
        lin.weight.copy_(q4_1(lin.weight))  # weights as a GGUF holds them
    q = Int4Linear.from_float(lin.weight, lin.bias)
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 64), torch.randn(5, 64), torch.randn(1, 40, 64)):  # decode, rows, a prompt
            ref, got = lin(x), q(x)
            assert got.shape == ref.shape and (got - ref).abs().max() < 0.03 * ref.abs().max()
        many = torch.randn(1, 40, 64)
        assert torch.equal(q(many), Int8Linear.forward(q, many))  # 40 rows: the int8 copy
        few = torch.randn(4, 64)
        assert torch.equal(q.rows(few), q.forward(few))
        assert not torch.equal(q.rows(few), Int8Linear.rows(q, few))  # 4 rows: the int4 kernel
    model = quantize_model(tiny(), "int4")
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, Int8Linear)}
    assert kinds["output"] == "Int8Linear" and kinds["layers.0.feed_forward.w2"] == "Int4Linear"


@pytest.mark.skipif(not vnni_available(), reason="FBGEMM with VNNI: x86 CPUs that have it")
def test_vnni_decode_path_is_close_to_float_and_only_on_its_layers():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    q = Int8Linear.from_float(lin.weight)
    q.vnni_from = 1
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        ref, got = lin(x), q(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()  # 8-bit weights and 8-bit activations
    assert q._packed is not None, "the one-token input went through FBGEMM"
    cfg = ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=32)
    for mode, want in (("int8", {"layers.0.feed_forward.w13": 1, "output": 1}), ("int4", {"output": 1})):
        model = quantize_model(Transformer(cfg), mode, vnni=True)
        flagged = {n: m.vnni_from for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.vnni_from}
        assert flagged == want, mode


@pytest.mark.skipif(not vnni_available(), reason="FBGEMM with VNNI: x86 CPUs that have it")
def test_only_decode_rows_go_through_fbgemm():
    """A batch of decode rows, (R, 1, in), takes FBGEMM from the layer's row count; a prompt's tokens, (1, T, in),
    never do (8-bit activations of a prompt's first positions lose too much); each decode row of a batch stays
    close to the same row computed alone."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    q = Int8Linear.from_float(lin.weight)
    q.vnni_from = 4
    rows = torch.nn.functional.normalize(torch.randn(6, 64), dim=-1)  # normalized rows, as after an RMSNorm
    with torch.inference_mode():
        q(rows[None, :3])  # one prompt of 3 tokens
        q(rows[:3, None])  # 3 decode rows: under the layer's 4
        assert q._packed is None, "neither went through FBGEMM"
        batch = q(rows[:, None])[:, 0]  # 6 decode rows
        assert q._packed is not None, "the batch went through FBGEMM"
        ref = lin(rows)
        q.vnni_from = 1
        alone = torch.cat([q(rows[i:i + 1, None])[:, 0] for i in range(6)])
    assert (batch - ref).abs().max() < 0.05 * ref.abs().max()
    assert (batch - alone).abs().max() < 0.03 * ref.abs().max()
