"""The real SmolLM2-135M-Instruct Q4_1 GGUF: tokenizer, chat template and next-token logits against
reference values recorded once from HF transformers (tests/data/record_smollm2_reference.py).

Tolerance: both implementations dequantize the same Q4_1/Q8_0 blocks to float32 and run float32 math, so
logits may differ only by summation order; we allow 1e-3 absolute on each of the top-20 logits (measured:
~1.2e-5) and 1e-5 relative on the L2 norm of the full logit vector. Token ids must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.config import env_cache_dir
from lm import hub
from lm.gguf import read_model
from lm.tokenizer import Tokenizer

pytestmark = pytest.mark.integration

REFERENCE = json.loads((Path(__file__).parents[1] / "data" / "smollm2_reference.json").read_text())
LOGIT_ATOL = 1e-3
NORM_RTOL = 1e-5

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"},
        {"role": "assistant", "content": "Arr, under the palm tree 🌴, 3 paces north."},
        {"role": "user", "content": "Thanks"},
    ],
    [
        {"role": "user", "content": "Write code"},
        {"role": "assistant", "content": "def f(x):\n    return x * 2\n"},
        {"role": "user", "content": "日本語で?"},
        {"role": "assistant", "content": " はい "},
    ],
]


@pytest.fixture(scope="module")
def smollm2():
    path = hub.pull("smollm2-135m", env_cache_dir())  # never skipped: a missing model is an error, in CI too
    model, g = read_model(path)
    return model, g, Tokenizer.from_gguf(g.metadata)


def test_reference_was_made_from_this_file(smollm2):
    assert REFERENCE["how"]["gguf_sha256"] == hub.REGISTRY["smollm2-135m"].files[0].sha256


def test_tokenizer_matches_the_reference_ids(smollm2):
    _, _, tok = smollm2
    assert tok.vocab_size == 49152
    for name, case in REFERENCE["texts"].items():
        assert tok.encode(case["text"]) == case["ids"], name
        assert tok.decode(case["ids"]) == case["text"], name


def test_special_tokens(smollm2):
    _, _, tok = smollm2
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2] and tok.eos_id == 2 and tok.bos_id == 1
    assert tok.stop_ids == [0, 2]  # <|endoftext|>, <|im_end|>
    assert tok.encode("hi", add_special=True) == tok.encode("hi")  # the file sets add_bos_token = False


def test_chat_template_matches_hf_and_the_files_own_jinja(smollm2):
    _, g, tok = smollm2
    for name, case in REFERENCE["chats"].items():
        ids, _ = tok.render_chat(case["messages"], add_generation_prompt=case["add_generation_prompt"])
        assert tok.render_prompt_text(case["messages"]) == case["text"], name
        assert ids == case["ids"], name
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        g.metadata["tokenizer.chat_template"])
    for messages in CONVERSATIONS:
        for gen in (True, False):
            text = template.render(messages=messages, add_generation_prompt=gen, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>")
            ids, mask = tok.render_chat(messages, add_generation_prompt=gen)
            assert tok.render_prompt_text(messages, add_generation_prompt=gen) == text
            assert ids == tok.encode(text)
            # trained-on text: each assistant content followed by <|im_end|>, nothing else
            trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
            assert trained == "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("name", list(REFERENCE["logits"]))
def test_next_token_logits_match_hf_transformers(smollm2, name):
    model, _, tok = smollm2
    case = REFERENCE["logits"][name]
    assert tok.encode(case["text"]) == case["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([case["ids"]]))[0, -1].float()  # (V,)
    assert logits.numel() == case["vocab"]
    ref_ids, ref_vals = case["top_ids"], torch.tensor(case["top_values"])
    diff = (logits[ref_ids] - ref_vals).abs().max().item()
    assert diff < LOGIT_ATOL, f"max |our - hf| over the reference top-20 = {diff:.2e}"
    assert int(logits.argmax()) == ref_ids[0]
    # nothing outside the reference top-20 beats its 20th logit (beyond the tolerance)
    others = logits.clone()
    others[ref_ids] = float("-inf")
    assert others.max().item() < ref_vals[-1].item() + LOGIT_ATOL
    assert abs(logits.norm().item() - case["l2_norm"]) <= NORM_RTOL * case["l2_norm"]
