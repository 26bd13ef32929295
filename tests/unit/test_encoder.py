"""lm.encoder on a tiny random BERT: weight mapping, padding invariance, order, norms, truncation, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from lm.encoder import Encoder, EncoderLoadError
from lm.quant import native_bf16

WORDS = ("the a cat dog sat on mat ran fast slow red blue house tree river stone light dark "
         "model vector index query answer paper virus test ##s ##ing ##ed").split()
CFG = {"vocab_size": 5 + len(WORDS), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
       "intermediate_size": 64, "max_position_embeddings": 24, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
       "pad_token_id": 0, "hidden_act": "gelu", "model_type": "bert"}


def hf_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random BERT state dict under Hugging Face names (plus the pooler and position_ids buffer)."""
    g = torch.Generator().manual_seed(seed)
    C, F_ = cfg["hidden_size"], cfg["intermediate_size"]

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    w = {
        "embeddings.word_embeddings.weight": r(cfg["vocab_size"], C),
        "embeddings.position_embeddings.weight": r(cfg["max_position_embeddings"], C),
        "embeddings.token_type_embeddings.weight": r(cfg["type_vocab_size"], C),
        "embeddings.LayerNorm.weight": 1 + r(C), "embeddings.LayerNorm.bias": r(C),
        "embeddings.position_ids": torch.arange(cfg["max_position_embeddings"])[None],
        "pooler.dense.weight": r(C, C), "pooler.dense.bias": r(C),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"], w[p + f"attention.self.{name}.bias"] = r(C, C), r(C)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = r(C, C), r(C)
        w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"] = 1 + r(C), r(C)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = r(F_, C), r(F_)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = r(C, F_), r(C)
        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"] = 1 + r(C), r(C)
    return w


def write_tokenizer(path: Path) -> None:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.enable_truncation(8)  # like the shipped MiniLM tokenizer.json (128): the encoder must override it
    tok.save(str(path))


def write_model(d: Path, weights: dict[str, torch.Tensor] | None = None, cfg: dict = CFG) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(weights if weights is not None else hf_weights(cfg), str(d / "model.safetensors"))
    write_tokenizer(d / "tokenizer.json")
    return d


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model(tmp_path / "tiny")


@pytest.fixture
def enc(model_dir: Path) -> Encoder:
    return Encoder.load(model_dir, dtype="fp32", threads=1)


def naive_bert(w: dict[str, torch.Tensor], ids: list[int], cfg: dict = CFG) -> torch.Tensor:
    """The textbook BERT forward for one unpadded sequence, head by head, on HF names -> mean-pooled unit vector."""
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D, eps = C // H, cfg["layer_norm_eps"]
    t = torch.tensor(ids)
    x = (w["embeddings.word_embeddings.weight"][t] + w["embeddings.position_embeddings.weight"][: len(ids)]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = torch.nn.functional.layer_norm(x, (C,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name: str, v: torch.Tensor, p: str = p) -> torch.Tensor:
            return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (lin(f"attention.self.{n}", x) for n in ("query", "key", "value"))
        heads = []
        for h in range(H):
            s = slice(h * D, (h + 1) * D)
            att = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(D), dim=-1)
            heads.append(att @ v[:, s])
        a = lin("attention.output.dense", torch.cat(heads, dim=1))
        x = torch.nn.functional.layer_norm(x + a, (C,), w[p + "attention.output.LayerNorm.weight"],
                                           w[p + "attention.output.LayerNorm.bias"], eps)
        m = lin("output.dense", torch.nn.functional.gelu(lin("intermediate.dense", x)))
        x = torch.nn.functional.layer_norm(x + m, (C,), w[p + "output.LayerNorm.weight"],
                                           w[p + "output.LayerNorm.bias"], eps)
    v = x.mean(dim=0)
    return v / v.norm()


TEXTS = ["the cat", "the dog ran fast on the mat", "a red house", "", "blue river stone light dark tree",
         "cats", "the model tested the query and the answer paper"]


def test_matches_textbook_bert_on_hf_weights(model_dir: Path, enc: Encoder):
    # proves the HF -> ours name mapping and the fused q/k/v order: a swap would change every vector
    w = hf_weights(CFG)
    ids = enc.tokenize(TEXTS)
    got = enc.encode(TEXTS)
    for row, seq in zip(got, ids, strict=True):
        np.testing.assert_allclose(row, naive_bert(w, seq).numpy(), atol=2e-5)


def test_padding_invariance(enc: Encoder):
    alone = enc.encode(["the cat"])
    in_batch = enc.encode(["the dog ran fast on the mat and the cat sat", "the cat", "blue river stone light"])
    np.testing.assert_allclose(in_batch[1], alone[0], atol=1e-5)


@pytest.mark.skipif(not native_bf16(), reason="no native bf16 on this CPU")
def test_padding_invariance_bf16(model_dir: Path):
    enc = Encoder.load(model_dir, dtype="bf16", threads=1)
    alone = enc.encode(["the cat"])
    in_batch = enc.encode(["the dog ran fast on the mat and the cat sat", "the cat"])
    assert float(alone[0] @ in_batch[1]) > 0.999


def test_order_preserved_after_length_sorting(enc: Encoder):
    batched = enc.encode(TEXTS, batch_size=2)  # several batches, sorted by length inside encode
    one_by_one = np.stack([enc.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # and the texts really differ, so a permutation would have been caught
    assert np.abs(batched[0] - batched[1]).max() > 1e-2


def test_texts_tokenized_a_block_at_a_time_keep_their_order(enc: Encoder, monkeypatch: pytest.MonkeyPatch):
    whole = enc.encode(TEXTS, batch_size=2)
    monkeypatch.setattr("lm.encoder.ENCODE_BLOCK", 3)  # 7 texts: blocks of 3, 3 and 1, each sorted inside
    calls: list[tuple[int, int]] = []
    blocked = enc.encode(TEXTS, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_allclose(blocked, whole, atol=1e-5)
    assert calls == [(2, 7), (3, 7), (5, 7), (6, 7), (7, 7)]


def test_unit_norm_and_shape(enc: Encoder):
    v = enc.encode(TEXTS)
    assert v.shape == (len(TEXTS), CFG["hidden_size"]) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.dim == CFG["hidden_size"]


def test_empty_list_and_progress(enc: Encoder):
    assert enc.encode([]).shape == (0, CFG["hidden_size"])
    calls: list[tuple[int, int]] = []
    enc.encode(TEXTS, batch_size=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 7), (6, 7), (7, 7)]


def test_truncation_to_max_tokens(enc: Encoder):
    # max_position_embeddings 24 caps max_tokens; the shipped tokenizer truncation (8) is overridden
    assert enc.max_tokens == 24 and enc.max_text_tokens == 22
    long = " ".join(["cat", "dog", "tree"] * 20)  # 60 words
    ids = enc.tokenize([long])[0]
    assert len(ids) == 24 and ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP]
    head = " ".join(long.split()[:22])
    np.testing.assert_allclose(enc.encode([long])[0], enc.encode([head])[0], atol=1e-6)
    assert enc.count_tokens(long) == 60  # counting is never truncated and has no specials
    assert enc.count_tokens("cats") == 2  # cat ##s
    assert enc.count_tokens("") == 0


def test_threads_restored(model_dir: Path):
    before = torch.get_num_threads()
    enc = Encoder.load(model_dir, dtype="fp32", threads=1 if before != 1 else 2)
    enc.encode(["the cat"])
    assert torch.get_num_threads() == before


def test_missing_and_unexpected_keys_are_named(tmp_path: Path):
    w = hf_weights(CFG)
    del w["encoder.layer.1.output.dense.weight"]
    del w["encoder.layer.0.attention.self.key.bias"]
    w["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(2)
    d = write_model(tmp_path / "bad", w)
    with pytest.raises(EncoderLoadError) as e:
        Encoder.load(d)
    msg = str(e.value)
    assert "blocks.1.proj.weight" in msg and "blocks.0.qkv.bias" in msg  # missing, in our names
    assert "encoder.layer.0.attention.self.rotary.weight" in msg  # unexpected, in theirs


def test_shape_mismatch_is_named(tmp_path: Path):
    cfg = {**CFG, "intermediate_size": 48}  # weights are for 64
    d = write_model(tmp_path / "bad", hf_weights(CFG), cfg=cfg)
    with pytest.raises(EncoderLoadError, match=r"shape mismatch: blocks\.0\.fc\.weight"):
        Encoder.load(d)


def test_missing_files_and_bad_arguments(tmp_path: Path, model_dir: Path):
    with pytest.raises(EncoderLoadError, match="not a directory"):
        Encoder.load(tmp_path / "nope")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(EncoderLoadError, match="tokenizer.json is missing"):
        Encoder.load(model_dir)
    d = write_model(tmp_path / "ok")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Encoder.load(d, dtype="fp16")
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EncoderLoadError, match="not a readable safetensors file"):
        Encoder.load(d)


def test_encode_rejects_a_bare_string(enc: Encoder):
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("the cat")  # type: ignore[arg-type]
