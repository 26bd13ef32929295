"""lm.quant: int8 / bf16 weight formats on single layers and on a tiny random Transformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lm.config import ModelConfig
from lm.model import KVCache, Transformer
from lm.quant import (
    BF16Linear,
    Int8Linear,
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


@pytest.mark.parametrize("mode", ["int8", "bf16"])
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
    with pytest.raises(ValueError, match="unknown weights format 'int4'"):
        quantize_model(tiny(), "int4")


@pytest.mark.skipif(not vnni_available(), reason="FBGEMM is part of every x86 torch build; absent elsewhere")
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
    model = quantize_model(Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                                                   hidden_dim=128, max_seq_len=32)), "int8", vnni=True)
    flagged = {n: m.vnni_from for n, m in model.named_modules() if isinstance(m, Int8Linear) and m.vnni_from}
    assert flagged == {"layers.0.attention.wqkv": 4, "layers.0.feed_forward.w13": 1, "output": 1}


@pytest.mark.skipif(not vnni_available(), reason="FBGEMM is part of every x86 torch build; absent elsewhere")
def test_only_decode_rows_go_through_fbgemm():
    """A batch of decode rows, (R, 1, in), takes FBGEMM from the layer's row count; a prompt's tokens, (1, T, in),
    never do (8-bit activations of a prompt's first positions lose too much); each decode row of a batch stays
    close to the same row computed alone."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    q = Int8Linear.from_float(lin.weight)
    q.vnni_from = 4
    rows = torch.randn(6, 64)
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


def test_smoothquant_keeps_the_float_model_and_flattens_its_input_outliers():
    """smooth() folds per-channel factors into the norms and the weights after them: the float model computes the
    same logits, and the inputs of wqkv and w13 lose most of the spread of their channel peaks."""
    from lm.quant import input_peaks, smooth

    model = tiny()
    with torch.no_grad():  # give a few input channels the outliers that real models have
        model.layers[0].attention_norm.weight[:3] = 20.0
        model.layers[1].ffn_norm.weight[5] = 30.0
    ids = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        before = model(torch.tensor([ids]))
        spread = {n: float(p.max() / p.median()) for n, p in input_peaks(model, ids).items()}
        smooth(model, ids)
        after = model(torch.tensor([ids]))
        smoothed = {n: float(p.max() / p.median()) for n, p in input_peaks(model, ids).items()}
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    for name in ("layers.0.attention.wqkv", "layers.1.feed_forward.w13"):
        assert smoothed[name] < spread[name] / 2, (name, spread[name], smoothed[name])
