"""The real Gemma 3 270M Q4_K_M GGUF (the hub's `gemma3-270m`): its SentencePiece tokenizer, next-token logits
and greedy continuations against HF transformers (reference values recorded once by
tests/data/record_gemma3_reference.py, as loading the GGUF in transformers takes minutes), the tokenizer against
SentencePiece itself built from the file's own tables, and the chat path of a model without a chat template.

Tolerance: both implementations dequantize the same blocks to float32 and run float32 math; we allow 1e-3
absolute on each of the top-20 logits (measured: 2.3e-5 on logits up to 22) and 1e-5 relative on the L2 norm.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from bot.config import env_cache_dir
from lm import hub
from lm.engine import Engine, GenerationConfig
from lm.gguf import read_model
from lm.model import KVCache
from lm.tokenizer import CHATML_TEMPLATE, Tokenizer
from tests.support.spm_vocab import spm_from_gguf

pytestmark = pytest.mark.integration

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "gemma3_reference.json").read_text())
LOGIT_ATOL = 1e-3
NORM_RTOL = 1e-5
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def gemma():
    path = hub.pull("gemma3-270m", env_cache_dir())  # never skipped: a missing model is an error, in CI too
    model, g = read_model(path, max_seq_len=2048)
    return path, model, g, Tokenizer.from_gguf(g.metadata)


def test_reference_was_made_from_this_file(gemma):
    assert REFERENCE["how"]["gguf_sha256"] == hub.REGISTRY["gemma3-270m"].files[0].sha256


def test_config_is_gemma3s(gemma):
    _, _, g, tok = gemma
    c = g.config
    assert (c.arch, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim) == ("gemma3", 18, 640, 4, 1, 256)
    assert c.sliding_window == REFERENCE["how"]["config"]["sliding_window"] == 512
    local = ["sliding_attention" if c.is_local(i) else "full_attention" for i in range(c.n_layers)]
    assert local == REFERENCE["how"]["config"]["layer_types"]
    assert (c.rope_theta, c.rope_local_theta, c.query_scale) == (1e6, 10000.0, 256 ** -0.5)
    assert c.qk_norm and c.post_norms and c.tie_embeddings and c.embed_scale == math.sqrt(640)
    assert c.activation == "gelu_tanh" and c.attn_softcap == 0 and c.final_softcap == 0
    assert tok.vocab_size == 262144 and tok.add_bos and tok.bos_id == 2 and tok.eos_id == 1
    assert tok.token_to_id("<end_of_turn>") in tok.stop_ids


def test_tokenizer_matches_transformers_and_sentencepiece(gemma):
    _, _, g, tok = gemma
    for name, case in REFERENCE["texts"].items():
        assert tok.encode(case["text"]) == case["ids"], name
        assert tok.decode(case["ids"]) == case["text"], name
    started = time.perf_counter()
    sp = spm_from_gguf(g.metadata)
    print(f"SentencePiece from the GGUF tables: {time.perf_counter() - started:.1f} s")
    docs = (ROOT / "README.md").read_text() + (ROOT / "ARCHITECTURE.md").read_text()
    texts = [case["text"] for case in REFERENCE["texts"].values()] + [docs[i:i + 400] for i in range(0, 8000, 400)]
    texts += ["ﬁ ligature, ℌ, ①, ｆｕｌｌｗｉｄｔｈ", "🏳️‍🌈👨‍👩‍👧‍👦", "Ελληνικά, русский, עברית, العربية, हिन्दी",
              "   \t  \n  ", "a   b    c     d", "emoji😀😀end"]
    for text in texts:
        if "<start_of_turn>" not in text:  # SentencePiece reads special tokens as text
            assert tok.encode(text) == sp.encode(text), text[:60]


@pytest.mark.parametrize("name", list(REFERENCE["logits"]))
def test_next_token_logits_match_transformers(gemma, name):
    _, model, _, tok = gemma
    case = REFERENCE["logits"][name]
    assert [tok.bos_id, *tok.encode(case["text"])] == case["ids"]
    with torch.no_grad():  # through a cache: the last position's logits only (262,144 per position)
        cache = KVCache(model.config, max_len=len(case["ids"]))
        logits = model(torch.tensor([case["ids"]]), cache=cache)[0, -1].float()
    assert logits.numel() == case["vocab"]
    ref_ids, ref_vals = case["top_ids"], torch.tensor(case["top_values"])
    diff = (logits[ref_ids] - ref_vals).abs().max().item()
    assert diff < LOGIT_ATOL, f"max |our - hf| over the reference top-20 = {diff:.2e}"
    assert int(logits.argmax()) == ref_ids[0]
    others = logits.clone()
    others[ref_ids] = float("-inf")
    assert others.max().item() < ref_vals[-1].item() + LOGIT_ATOL
    assert abs(logits.norm().item() - case["l2_norm"]) <= NORM_RTOL * case["l2_norm"]


@pytest.mark.parametrize("name", ["plain", "long"])
def test_greedy_continuation_matches_transformers(gemma, name):
    """The cached decode path (past the 512-position window for the long prompt) continues as transformers."""
    _, model, _, tok = gemma
    case = REFERENCE["logits"][name]
    engine = Engine(model, tok, max_len=2048, kv_dtype=torch.float32)
    result = engine.generate(case["ids"], GenerationConfig(max_new_tokens=len(case["greedy"]), ignore_stop_ids=True))
    assert result.ids == case["greedy"], tok.decode(result.ids)


def test_chats_without_a_template_through_the_chat_loader(gemma):
    """The file is the pretrained model and has no chat template: the ChatML fallback renders the conversation
    (with Gemma's BOS first), the fallback's end of turn stops generation, and the int4 model writes words."""
    from lm.load import load_chat_model

    model, tok = load_chat_model("gemma3-270m", env_cache_dir(), weights="int4", max_seq_len=1024)
    assert tok.own_template is None and tok.chat_template == CHATML_TEMPLATE and tok.stop_strings == ("<|im_end|>",)
    ids, _ = tok.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    assert ids[0] == tok.bos_id
    result = Engine(model, tok, max_len=1024).generate(ids, GenerationConfig(max_new_tokens=24))
    words = result.text.split()
    assert "<|im_end|>" not in result.text and len(words) >= 3
    assert sum(w.strip(".,!?\"'").isalpha() for w in words) >= len(words) // 2, result.text
    prompt = [tok.bos_id, *tok.encode("Question: What is the capital of France?\nAnswer:")]
    answer = Engine(model, tok, max_len=1024).generate(prompt, GenerationConfig(max_new_tokens=8)).text
    assert "Paris" in answer, answer
