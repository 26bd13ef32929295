"""Every architecture docent loads, checked against HF transformers on the same tiny random weights.

Each model is a transformers model (tests/support/hf_gguf.py) written as GGUF the way llama.cpp's converter writes
it; docent reads the file back and must give transformers' logits: the full forward, the cached one-token decode
path, the continuous-batching slots, the prefix cache, and the weight formats of lm.quant. Windows of 8 positions
with 24-token sequences make the sliding-window layers matter.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.engine import Engine, GenerationConfig
from lm.gguf import GGUFError, load_gguf, read_model
from lm.model import KVCache, Transformer
from lm.quant import MODES, quantize_model
from lm.serve import Server
from lm.tokenizer import Tokenizer
from tests.support.hf_gguf import HF_ARCHS, hf_model, write_hf_gguf

TOL = 1e-4  # float32 against float32: measured differences are ~2e-6 on logits of magnitude ~3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{arch: (transformers model, GGUF path)}, made on first use."""
    made: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("archs")

    def get(arch: str, **overrides):
        key = arch + repr(sorted(overrides.items()))
        if key not in made:
            window, qtype = overrides.pop("gguf_window", None), overrides.pop("qtype", "F32")
            hf = hf_model(arch, **overrides)
            made[key] = hf, write_hf_gguf(root / f"{len(made)}-{arch}.gguf", hf, arch, sliding_window=window,
                                          qtype=qtype)
        return made[key]
    return get


def hf_logits(hf, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(idx).logits


def cached_logits(model: Transformer, idx: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits for positions prefill-1 .. T-2 (predicting prefill .. T-1): a prefill, then one token at a time."""
    cache = KVCache(model.config, batch_size=idx.shape[0], max_len=idx.shape[1])
    with torch.no_grad():
        steps = [model(idx[:, :prefill], cache=cache)[:, -1]]
        for t in range(prefill, idx.shape[1] - 1):
            steps.append(model(idx[:, t:t + 1], cache=cache)[:, -1])  # Transformer.decode
    return torch.stack(steps, dim=1)


EXPECTED = {  # what lm/gguf.py must read from each file
    "llama": dict(arch="llama", tie_embeddings=False, rope_freq_factors=None),
    "llama3": dict(arch="llama", tie_embeddings=True, rope_theta=500000.0),
    "mistral": dict(arch="llama", sliding_window=0),
    "qwen2": dict(arch="qwen2", qkv_bias=True),
    "qwen3": dict(arch="qwen3", qk_norm=True, key_length=32, qkv_bias=False),
    "gemma2": dict(arch="gemma2", post_norms=True, attn_softcap=50.0, final_softcap=30.0, sliding_window=8,
                   global_every=2, activation="gelu_tanh", key_length=32),
    "gemma3": dict(arch="gemma3", qk_norm=True, post_norms=True, sliding_window=8, global_every=6,
                   rope_local_theta=10000.0, rope_theta=1e6, final_softcap=0.0),
    "phi3": dict(arch="phi3", tie_embeddings=False, sliding_window=0),
}


@pytest.mark.parametrize("arch", HF_ARCHS)
def test_logits_match_transformers(files, arch):
    hf, path = files(arch)
    model, g = read_model(path)
    for key, value in EXPECTED[arch].items():
        assert getattr(g.config, key) == value, key
    idx = torch.randint(0, hf.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    want = hf_logits(hf, idx)
    with torch.no_grad():
        got = model(idx)
    assert got.shape == want.shape
    assert (got - want).abs().max() < TOL, f"full forward: {(got - want).abs().max():.2e}"
    cached = cached_logits(model, idx, prefill=10)
    assert (cached - want[:, 9:23]).abs().max() < TOL, f"decode path: {(cached - want[:, 9:23]).abs().max():.2e}"


def test_llama3_rope_factors_are_read_and_matter(files):
    hf, path = files("llama3")
    model, g = read_model(path)
    factors = g.config.rope_freq_factors
    assert factors is not None and len(factors) == g.config.head_dim // 2 and max(factors) == 8.0
    assert min(factors) == 1.0  # high frequencies unscaled, low ones by the factor, smoothed between
    idx = torch.randint(0, 384, (1, 40), generator=torch.Generator().manual_seed(2))
    plain = Transformer(g.config.__class__(**{**g.config.__dict__, "rope_freq_factors": None}))
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        assert (plain(idx) - hf_logits(hf, idx)).abs().max() > 100 * TOL  # without them, a different model


def test_phi3_longrope_short_and_long_factors(files):
    """Within the original context the short factors, beyond it the long ones (as transformers picks them for a
    sequence of that length, and llama.cpp for a context of that size), with the attention factor."""
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
            "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.5 * i for i in range(8)]}
    hf, path = files("phi3", rope_parameters=rope, original_max_position_embeddings=16)
    short, g = read_model(path, max_seq_len=16)
    assert g.config.rope_freq_factors == pytest.approx(rope["short_factor"]) and g.config.rope_attn_factor > 1.0
    idx = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (short(idx) - hf_logits(hf, idx)).abs().max() < TOL
    long, g = read_model(path)  # the whole 128-position context: long factors
    assert g.config.rope_freq_factors == pytest.approx(rope["long_factor"])
    idx = torch.randint(0, 384, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (long(idx) - hf_logits(hf, idx)).abs().max() < TOL


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation, one full forward per token (no cache of its own to trust)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(hf_logits(hf, torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("arch,overrides", [("gemma2", {}), ("gemma3", {}),
                                            ("mistral", {"sliding_window": 8, "gguf_window": 8})])
def test_sliding_window_in_engine_slots_and_prefix_cache(files, arch, overrides):
    """Contexts well past the window: the single-stream engine (KVCache), two requests decoding together (SlotBatch),
    a lone one (MirroredRow), chunked prefill (KVCache over the store) and a prompt that extends a finished one
    (its slot's keys reused) all continue as transformers does."""
    hf, path = files(arch, **overrides)
    model, g = read_model(path)
    assert any(g.config.is_local(i) for i in range(g.config.n_layers)) and g.config.sliding_window == 8
    tok = Tokenizer.from_gguf(path)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in (19, 12)]
    cfg = GenerationConfig(max_new_tokens=6, ignore_stop_ids=True)
    want = [hf_greedy(hf, p, 6) for p in prompts]
    with torch.inference_mode():
        assert Engine(model, tok, max_len=64, kv_dtype=torch.float32).generate(prompts[0], cfg).ids == want[0]
    server = Server(model, tok, max_len=64, slots=2, prefill_chunk=7, kv_dtype=torch.float32)
    try:
        tickets = [server.submit(p, cfg) for p in prompts]
        for ticket in tickets:
            for _ in ticket:
                pass
        assert [t.result.ids for t in tickets] == want
        follow = prompts[0] + want[0] + [7, 8, 9]  # the next turn: the parked slot's 25 positions are reused
        result = server.generate(follow, cfg)
        assert result.ids == hf_greedy(hf, follow, 6)
    finally:
        server.close()


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3", "phi3", "llama3"])
@pytest.mark.parametrize("mode", MODES)
def test_weight_formats_keep_every_architecture_close(files, arch, mode):
    """lm.quant's formats on the extra norms, biases and fused layers: the decode path stays near the float32
    model of the same file (Q4_1 weights, which int4 keeps exactly, as it keeps a real file's 4-bit groups)."""
    hf, path = files(arch, qtype="Q4_1")
    model, _ = read_model(path)
    idx = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(6))
    want = cached_logits(model, idx, prefill=8)
    quantized = quantize_model(read_model(path)[0], mode)
    got = cached_logits(quantized, idx, prefill=8)
    err = (got - want).abs().max() / want.abs().max()
    assert err < {"fp32": 1e-6, "bf16": 0.03, "int8": 0.05, "int4": 0.03}[mode], f"{mode}: {err:.3f}"


@pytest.mark.parametrize("arch", ["gemma3", "llama3", "phi3"])
def test_converted_weights_cache_keeps_the_new_config(files, tmp_path, arch):
    """load_chat_model's converted copy holds the local RoPE base, the RoPE factors and the extra modules."""
    import shutil

    from lm.load import load_chat_model

    hf, source = files(arch)
    path = tmp_path / "m.gguf"
    shutil.copy(source, path)
    threads = torch.get_num_threads()
    first, _ = load_chat_model(path, tmp_path, weights="bf16", threads=threads)
    assert list(tmp_path.glob("m.gguf.bf16.v*.pt"))
    again, tok = load_chat_model(path, tmp_path, weights="bf16", threads=threads)
    assert again.config == first.config
    idx = torch.randint(0, 384, (1, 12), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(cached_logits(again, idx, 6), cached_logits(first, idx, 6))
    assert (cached_logits(again, idx, 6) - hf_logits(hf, idx)[:, 5:11]).abs().max() < 0.2


def test_unsupported_architecture_rope_scaling_and_quant_type_are_named(files, tmp_path):
    import gguf

    from tests.support.tiny_gguf import write_tiny_gguf

    tiny = write_tiny_gguf(tmp_path / "mamba.gguf", arch="mamba", n_layers=1)
    with pytest.raises(GGUFError, match="unsupported architecture 'mamba'; docent loads llama, qwen2, qwen3, "
                                        "gemma2, gemma3, phi3"):
        read_model(tiny.path)
    blocks = np.zeros((64, 80), dtype=np.uint8)  # Q8_1: 40 bytes per 32 values, which gguf cannot dequantize
    tiny = write_tiny_gguf(tmp_path / "q81.gguf", n_layers=1, raw_tensors={"blk.0.attn_q.weight": (blocks, "Q8_1")})
    with pytest.raises(GGUFError, match="blk.0.attn_q.weight has type Q8_1, which docent cannot load"):
        load_gguf(tiny.path)
    hf, path = files("qwen2")
    meta_path = tmp_path / "yarn.gguf"
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(meta_path, "qwen2")
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "general.architecture")):
            continue
        value = field.contents()
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, value, kind)
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(4.0)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="RoPE scaling 'yarn' is not supported"):
        read_model(meta_path)


def test_lora_fine_tuning_runs_on_gemma2(files, tmp_path):
    """lm.train's LoRA on a gemma2 GGUF base (soft-capped, windowed attention over blocks longer than the window,
    post norms, GeGLU): the loss falls, and the version loads as base + adapter and is the better model."""
    import json

    from lm.load import load_model, load_model_dir
    from lm.train import TrainConfig, train
    from tests.support.tiny_gguf import CORPUS

    _, path = files("gemma2")
    (tmp_path / "t.txt").write_text("\n".join(CORPUS))
    summary = train(TrainConfig(mode="lora", base=str(path), data=str(tmp_path / "t.txt"), out_dir=str(tmp_path / "v1"),
                                block_size=24, batch_size=4, steps=20, lr=1e-2, warmup=2, lora_rank=4, lora_alpha=16,
                                eval_interval=0, eval_batches=2, log_interval=5, progress=False))
    assert summary["status"] == "done"
    recs = [json.loads(x) for x in (tmp_path / "v1" / "metrics.jsonl").read_text().splitlines()]
    assert summary["val_loss"] < 0.95 * recs[0]["loss"]
    base, tok, _ = load_model(path, tmp_path)
    tuned, _, _ = load_model_dir(tmp_path / "v1", tmp_path)
    ids = torch.tensor([tok.encode(CORPUS[0])[:25]])
    with torch.no_grad():
        assert tuned(ids[:, :-1], ids[:, 1:]) < base(ids[:, :-1], ids[:, 1:])
