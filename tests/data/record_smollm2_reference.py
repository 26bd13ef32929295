"""Record reference values for tests/integration/test_smollm2_real.py from an independent implementation.

HF transformers reads the same SmolLM2-135M-Instruct Q4_1 GGUF with its own GGUF reader, dequantizer,
tokenizer builder and Llama implementation; we store its token ids and next-token logits once, and the
integration test checks docent's tokenizer and model against them.

Run ONCE, in a throw-away venv that is never a project dependency:

    python3.11 -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 transformers gguf sentencepiece
    /tmp/hf/bin/python tests/data/record_smollm2_reference.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

(the default path is the docent hub cache, filled by `docent model pull smollm2-135m`). It rewrites
tests/data/smollm2_reference.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
DEFAULT_GGUF = Path(os.environ.get("DOCENT_CACHE_DIR", "~/.cache/docent")).expanduser() / \
    "models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = {
    "mixed": ("Hello  world! 12345 — café naïve 😀👍🏽 日本語のテキスト 中文 한국어\n"
              "\tdef f(x):\n    return x**2  # ✓ 3.14159\n   leading spaces, trailing   "),
    "digits": "In 2024, 1,234,567 people paid $99.99 (or 0x1F) on 03/14.",
    "specials": "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
}
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is the capital of France?"}],
    "with_system": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primes."},
        {"role": "assistant", "content": "2, 3, 5."},
        {"role": "user", "content": "And the next one?"},
    ],
}
PROMPTS = {
    "plain": "The capital of France is",
    "chat": None,  # the user_only conversation rendered with the generation prompt
    "code": "def fibonacci(n):\n    ",
}
TOP_K = 20


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_GGUF
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()

    out: dict = {
        "how": {
            "script": "tests/data/record_smollm2_reference.py",
            "implementation": "HF transformers AutoTokenizer/AutoModelForCausalLM.from_pretrained(gguf_file=...), "
                              "weights dequantized to float32, eager CPU forward",
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                         "tokenizers": tokenizers.__version__, "python": sys.version.split()[0]},
            "gguf_file": path.name,
            "gguf_sha256": sha,
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_class": type(model).__name__,
            "dtype": str(next(model.parameters()).dtype),
        },
        "texts": {k: {"text": t, "ids": tok.encode(t, add_special_tokens=False)} for k, t in TEXTS.items()},
        "chats": {},
        "logits": {},
    }
    for name, msgs in CONVERSATIONS.items():
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out["chats"][name] = {"messages": msgs, "add_generation_prompt": True, "text": text,
                              "ids": tok.encode(text, add_special_tokens=False)}
    PROMPTS["chat"] = out["chats"]["user_only"]["text"]
    with torch.no_grad():
        for name, text in PROMPTS.items():
            ids = tok.encode(text, add_special_tokens=False)
            logits = model(torch.tensor([ids])).logits[0, -1].float()  # (V,)
            top = torch.topk(logits, TOP_K)
            out["logits"][name] = {"text": text, "ids": ids, "top_ids": top.indices.tolist(),
                                   "top_values": [round(v, 6) for v in top.values.tolist()],
                                   "l2_norm": round(float(logits.norm()), 6),
                                   "mean": round(float(logits.mean()), 6), "vocab": int(logits.numel())}
            print(name, ids[:12], top.indices[:5].tolist(), [round(v, 3) for v in top.values[:5].tolist()])
    text = json.dumps(out, indent=1, ensure_ascii=False)
    # keep each list of numbers on one line so the file stays readable
    text = re.sub(r"\[[-0-9.,\s]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    (HERE / "smollm2_reference.json").write_text(text + "\n")
    print("wrote", HERE / "smollm2_reference.json")


if __name__ == "__main__":
    main()
