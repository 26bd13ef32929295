"""Record reference values for tests/integration/test_gemma3_real.py from an independent implementation.

HF transformers reads the same Gemma 3 270M Q4_K_M GGUF with its own GGUF reader, dequantizer, tokenizer builder
and Gemma 3 implementation (sliding-window layers, their own RoPE base, q/k norms, GeGLU); we store its token ids,
next-token logits and greedy continuations once, and the integration test checks docent against them. Loading the
GGUF in transformers took 3.5 minutes here, too long for every test run.

Run ONCE with the dev extra installed (transformers and accelerate):

    .venv/bin/python tests/data/record_gemma3_reference.py [path/to/gemma-3-270m-q4_k_m.gguf]

(the default path is the docent hub cache, filled by `docent model pull gemma3-270m`). It rewrites
tests/data/gemma3_reference.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_GGUF = Path(os.environ.get("DOCENT_CACHE_DIR", "~/.cache/docent")).expanduser() / \
    "models/gemma3-270m/gemma-3-270m-q4_k_m.gguf"

TEXTS = {
    "mixed": ("Hello  world! 12345 — café naïve 😀👍🏽 日本語のテキスト 中文 한국어\n"
              "\tdef f(x):\n    return x**2  # ✓ 3.14159\n   leading spaces, trailing   "),
    "digits": "In 2024, 1,234,567 people paid $99.99 (or 0x1F) on 03/14.",
    "specials": "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "html": "<b>bold</b>\n\n\n<i>it</i>     five spaces",
}
PROMPTS = {  # each after <bos>, as Gemma is run
    "plain": "The capital of France is",
    "code": "def fibonacci(n):\n    ",
    # longer than the 512-position sliding window, so that the local layers' window matters
    "long": " ".join(f"Item {i} is {'red' if i % 3 else 'blue'}." for i in range(120)) + " Item 120 is",
}
TOP_K = 20
GREEDY = 16


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    out: dict = {
        "how": {
            "script": "tests/data/record_gemma3_reference.py",
            "implementation": "HF transformers AutoTokenizer/AutoModelForCausalLM.from_pretrained(gguf_file=...), "
                              "weights dequantized to float32, eager CPU forward, greedy generate",
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
            "gguf_file": path.name,
            "gguf_sha256": sha,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_class": type(model).__name__,
            "config": {k: getattr(model.config, k) for k in ("sliding_window", "layer_types", "head_dim",
                                                              "query_pre_attn_scalar")},
        },
        "texts": {k: {"text": t, "ids": tok.encode(t, add_special_tokens=False)} for k, t in TEXTS.items()},
        "logits": {},
    }
    bos = tok.bos_token_id
    for name, text in PROMPTS.items():
        ids = [bos, *tok.encode(text, add_special_tokens=False)]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY, do_sample=False)[0, len(ids):]
        top = logits.topk(TOP_K)
        out["logits"][name] = {"text": text, "ids": ids, "vocab": logits.numel(), "top_ids": top.indices.tolist(),
                               "top_values": top.values.tolist(), "l2_norm": logits.norm().item(),
                               "greedy": greedy.tolist(), "greedy_text": tok.decode(greedy)}
        print(name, len(ids), "tokens ->", repr(tok.decode(greedy)))
    (HERE / "gemma3_reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
