"""lm/gguf.py on tiny GGUF files written by tests/support/tiny_gguf.py: dequantization, Q/K un-permutation,
qwen2 biases, and clear errors for truncated files and unsupported architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.gguf import GGUFError, load_gguf, read_metadata, read_model
from lm.model import Transformer
from tests.support.tiny_gguf import SMOLLM2_TEMPLATE, write_tiny_gguf

WEIGHT = "layers.0.attention.wqkv.weight"


def reference_logits(tiny, idx: torch.Tensor) -> torch.Tensor:
    """Our Transformer with the original (never permuted, never quantized) weights."""
    model = Transformer(tiny.config)
    model.load_state_dict(tiny.state_dict, strict=not tiny.config.tie_embeddings)
    if tiny.config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    with torch.no_grad():
        return model.eval()(idx)


def block_max_error(orig: np.ndarray, qtype: str) -> np.ndarray:
    """The worst error each 32-value block may have after a round trip through `qtype`, from ggml's formulas:
    half a quantization step (a full step where the `_0` types clip the side opposite the max), plus the
    rounding of the fp16 scale (and min) times the largest quant."""
    b = orig.reshape(-1, 32).astype(np.float64)
    amax, lo = np.abs(b).max(axis=1), b.min(axis=1)
    span = b.max(axis=1) - lo
    step, base, qmax, with_min = {
        "Q8_0": (amax / 127, 0.5, 127, False),
        "Q4_0": (amax / 8, 1.0, 8, False),
        "Q5_0": (amax / 16, 1.0, 16, False),
        "Q4_1": (span / 15, 0.5, 15, True),
        "Q5_1": (span / 31, 0.5, 31, True),
    }[qtype]
    fp16_eps = 2.0**-11
    bound = base * step + qmax * step * fp16_eps + (np.abs(lo) * fp16_eps if with_min else 0)
    return bound * 1.01 + 1e-7


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_dequantized_weights_are_close_to_the_floats_they_came_from(tmp_path, qtype):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", qtype=qtype)
    g = load_gguf(tiny.path)
    assert g.tensor_types["blk.0.attn_q.weight"] == qtype
    assert g.tensor_types["blk.0.attn_norm.weight"] == "F32"
    for name in [WEIGHT, "layers.1.feed_forward.w13.weight", "layers.1.feed_forward.w2.weight",
                 "tok_embeddings.weight"]:
        orig, got = tiny.state_dict[name].numpy(), g.state_dict[name].numpy()
        assert got.shape == orig.shape and got.dtype == np.float32
        err = np.abs(got - orig).reshape(-1, 32).max(axis=1)
        assert (err <= block_max_error(orig, qtype)).all(), f"{name}: worst block error {err.max():.3g}"
        assert err.max() > 0  # really quantized, not silently stored as floats
    # norms are stored F32 and come back exactly
    assert torch.equal(g.state_dict["layers.1.ffn_norm.weight"], tiny.state_dict["layers.1.ffn_norm.weight"])


def test_f16_weights_round_trip(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", qtype="F16")
    g = load_gguf(tiny.path)
    expected = tiny.state_dict[WEIGHT].half().float()
    assert torch.equal(g.state_dict[WEIGHT], expected)


# --- K-quants: gguf cannot quantize to them, so we write random blocks and decode them with an independent
# implementation of ggml's dequantize_row_q4_K / dequantize_row_q6_K (ggml-quants.c).

def ref_dequant_q4_k(blocks: np.ndarray) -> np.ndarray:
    out = []
    for blk in blocks.reshape(-1, 144):
        d, dmin = blk[0:4].view(np.float16).astype(np.float32)
        sc, qs = blk[4:16], blk[16:144]
        y = []
        for j in range(8):  # 8 sub-blocks of 32 values, each with a 6-bit scale and a 6-bit min
            if j < 4:
                s, m = sc[j] & 63, sc[j + 4] & 63
            else:
                s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4)
                m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
            q = qs[32 * (j // 2): 32 * (j // 2) + 32]
            q = (q & 0xF) if j % 2 == 0 else (q >> 4)
            y.append(d * float(s) * q.astype(np.float32) - dmin * float(m))
        out.append(np.concatenate(y))
    return np.concatenate(out)


def ref_dequant_q6_k(blocks: np.ndarray) -> np.ndarray:
    out = []
    for blk in blocks.reshape(-1, 210):
        ql, qh, sc = blk[0:128], blk[128:192], blk[192:208].view(np.int8).astype(np.float32)
        d = blk[208:210].view(np.float16).astype(np.float32)[0]
        y = np.zeros(256, dtype=np.float32)
        for n in range(2):  # two halves of 128 values
            L, H, S = ql[64 * n: 64 * n + 64].astype(np.int32), qh[32 * n: 32 * n + 32].astype(np.int32), sc[8 * n:]
            for ll in range(32):
                i = ll // 16
                q1 = ((L[ll] & 0xF) | (((H[ll] >> 0) & 3) << 4)) - 32
                q2 = ((L[ll + 32] & 0xF) | (((H[ll] >> 2) & 3) << 4)) - 32
                q3 = ((L[ll] >> 4) | (((H[ll] >> 4) & 3) << 4)) - 32
                q4 = ((L[ll + 32] >> 4) | (((H[ll] >> 6) & 3) << 4)) - 32
                base = 128 * n
                y[base + ll] = d * S[i] * q1
                y[base + ll + 32] = d * S[i + 2] * q2
                y[base + ll + 64] = d * S[i + 4] * q3
                y[base + ll + 96] = d * S[i + 6] * q4
        out.append(y)
    return np.concatenate(out)


def random_k_blocks(qtype: str, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = {"Q4_K": 144, "Q6_K": 210}[qtype]
    blocks = rng.integers(0, 256, size=(rows, size), dtype=np.uint8)
    scale = rng.uniform(1e-3, 4e-3, size=(rows, 2)).astype(np.float16).view(np.uint8)  # (rows, 4) bytes
    if qtype == "Q4_K":
        blocks[:, 0:4] = scale  # d and dmin
    else:
        blocks[:, 208:210] = scale[:, 0:2]  # d
    return blocks


@pytest.mark.parametrize("qtype,decode", [("Q4_K", ref_dequant_q4_k), ("Q6_K", ref_dequant_q6_k)])
def test_k_quant_blocks_decode_like_ggml(tmp_path, qtype, decode):
    dim, hidden = 64, 256  # ffn_down rows have `hidden` = 256 values: one super-block each
    blocks = random_k_blocks(qtype, rows=dim)
    tiny = write_tiny_gguf(tmp_path / "m.gguf", hidden_dim=hidden,
                           raw_tensors={"blk.0.ffn_down.weight": (blocks, qtype)})
    g = load_gguf(tiny.path)
    assert g.tensor_types["blk.0.ffn_down.weight"] == qtype
    expected = decode(blocks).reshape(dim, hidden)
    np.testing.assert_allclose(g.state_dict["layers.0.feed_forward.w2.weight"].numpy(), expected, rtol=1e-6, atol=1e-7)


# --- whole models

def test_llama_qk_unpermutation_gives_the_original_models_logits(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", n_heads=4, n_kv_heads=2)  # F32: only the layout changes
    model, g = read_model(tiny.path)
    assert g.config.arch == "llama" and g.config.n_kv_heads == 2 and g.config.tie_embeddings
    idx = torch.randint(0, tiny.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(idx)
    want = reference_logits(tiny, idx)
    assert got.shape == (2, 19, tiny.config.vocab_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the file really holds permuted rows (else this test could not notice a missing un-permutation)
    import gguf

    stored = {t.name: t for t in gguf.GGUFReader(tiny.path).tensors}["blk.0.attn_q.weight"]
    q_orig = tiny.state_dict[WEIGHT][: tiny.config.dim].numpy()
    assert not np.array_equal(np.asarray(stored.data).reshape(q_orig.shape), q_orig)
    assert np.array_equal(g.state_dict[WEIGHT][: tiny.config.dim].numpy(), q_orig)


def test_untied_output_head_loads(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", tie_embeddings=False, n_layers=1)
    model, g = read_model(tiny.path)
    assert not g.config.tie_embeddings
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    idx = torch.arange(12)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(tiny, idx), atol=1e-5, rtol=1e-5)


def test_qwen2_with_qkv_biases_loads_and_matches(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "q.gguf", arch="qwen2", n_heads=4, n_kv_heads=1)
    model, g = read_model(tiny.path)
    assert g.config.arch == "qwen2" and g.config.qkv_bias
    assert torch.equal(g.state_dict["layers.1.attention.wqkv.bias"], tiny.state_dict["layers.1.attention.wqkv.bias"])
    idx = torch.randint(0, tiny.config.vocab_size, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_logits(tiny, idx), atol=1e-5, rtol=1e-5)


def test_quantized_model_stays_close_to_the_float_model(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", qtype="Q8_0")
    model, _ = read_model(tiny.path)
    idx = torch.randint(0, tiny.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(idx)
    want = reference_logits(tiny, idx)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert not torch.equal(got, want)


def test_metadata_has_tokenizer_tables_and_template(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf", vocab=300)
    meta = read_metadata(tiny.path)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == tiny.tokens and len(tiny.tokens) == 300
    assert meta["tokenizer.ggml.merges"] == tiny.merges
    assert meta["tokenizer.ggml.token_type"] == tiny.token_types
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == SMOLLM2_TEMPLATE
    assert meta["llama.block_count"] == 2


# --- bad files

def test_truncated_tensor_data_is_a_clear_error(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf")
    data = tiny.path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GGUFError, match="truncated"):
        load_gguf(cut)


def test_file_cut_inside_the_header_is_a_clear_error(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.path.read_bytes()[:200])
    with pytest.raises(GGUFError, match="truncated|corrupt"):
        load_gguf(cut)


def test_not_a_gguf_and_missing_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(GGUFError, match="not a GGUF"):
        load_gguf(bad)
    with pytest.raises(GGUFError, match="no such file"):
        load_gguf(tmp_path / "missing.gguf")


def test_other_architecture_is_refused_by_name(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "neox.gguf", arch="gptneox", n_layers=1)
    with pytest.raises(GGUFError, match="unsupported architecture 'gptneox'"):
        read_model(tiny.path)


def test_converted_weights_are_cached_and_stale_copies_removed(tmp_path):
    """load_chat_model writes the converted model next to the GGUF and loads it from there the next time; writing
    it removes the same format's files of older cache versions or of an older GGUF, and keeps every other file."""
    from lm.load import load_chat_model
    from lm.runtime import CACHE_VERSION

    path = write_tiny_gguf(tmp_path / "m.gguf").path
    stale = [tmp_path / "m.gguf.int8.v2.1-2.pt", tmp_path / f"m.gguf.int8.v{CACHE_VERSION}.1-2.pt"]
    kept = [tmp_path / "m.gguf.int4.v2.1-2.pt", tmp_path / "m.gguf.int8.ctx64.v2.1-2.pt", tmp_path / "notes.pt"]
    for f in stale + kept:
        f.write_bytes(b"old")
    threads = torch.get_num_threads()
    model, _ = load_chat_model(path, tmp_path, weights="int8", threads=threads)
    (cached,) = [f for f in tmp_path.glob(f"m.gguf.int8.v{CACHE_VERSION}.*.pt") if f not in stale]
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    written = cached.stat().st_mtime_ns
    again, _ = load_chat_model(path, tmp_path, weights="int8", threads=threads)
    assert cached.stat().st_mtime_ns == written  # read back, not rebuilt
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids))


def test_header_reader_agrees_with_gguf_readers(tmp_path):
    """lm.gguf parses the header itself (gguf.GGUFReader is ~40x slower on a 262k-token vocabulary): every key,
    value, tensor type, offset and dequantized tensor equals what gguf's own reader gives."""
    import gguf

    from lm.gguf import GGUFFile

    tiny = write_tiny_gguf(tmp_path / "m.gguf", qtype="Q4_1", types={"blk.0.ffn_up.weight": "F16"},
                           raw_tensors={"blk.1.ffn_down.weight": (random_k_blocks("Q6_K", rows=64), "Q6_K")},
                           hidden_dim=256)
    ours, ref = GGUFFile(tiny.path), gguf.GGUFReader(tiny.path)
    expected = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert ours.metadata.keys() == expected.keys()
    for key, value in expected.items():
        assert ours.metadata[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (info.type_name, info.offset, info.n_bytes) == (t.tensor_type.name, t.data_offset, int(t.n_bytes))
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
        assert np.array_equal(ours.dequantize(t.name), want), t.name
