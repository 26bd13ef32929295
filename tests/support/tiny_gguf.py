"""Tiny random-weight GGUF files for tests: real tokenizer tables, a chat template, any architecture name.

`write_tiny_gguf` takes (or makes) a random state dict in lm.model.Transformer's layout and writes it the way
llama.cpp's converter would: Q and K rows permuted for `llama`, fused wqkv / w13 split into
attn_q/k/v and ffn_gate/up, 2-D weights quantized with gguf's own quantizer. It returns the float weights it
started from, so tests can compare what lm/gguf.py reads back against them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import quants
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lm.config import ModelConfig
from lm.model import Transformer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED_TOKENS = ["<tool_call>"]  # gguf TokenType.USER_DEFINED: never split, but not special

# SmolLM2-Instruct's own template: a default system prompt unless the conversation brings one.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_TEMPLATE = SMOLLM2_TEMPLATE.replace(
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face", "You are a helpful assistant.")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Hello world! Hello there, how are you today? I am fine, thank you for asking.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5\n",
    "In 2024 there were 1234 documents, 56 chats and 7 models; 3.14159 is pi.",
    "user assistant system: you are a helpful assistant. Answer the question briefly.",
    "Café, naïve, résumé — 日本語, 中文, 한국어, emoji 😀👍 and more text for the tokenizer.",
] * 4


@dataclass
class TinyGGUF:
    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # Transformer layout, float32, before any quantization
    tokens: list[str]
    merges: list[str]
    token_types: list[int]


def train_tiny_tokenizer(vocab_size: int, pre: str = "smollm", specials: list[str] | None = None) -> Tokenizer:
    """A byte-level BPE (HF `tokenizers`) trained on CORPUS; its tables are what tiny files store."""
    specials = list(SPECIALS if specials is None else specials)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if pre == "smollm" else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_vocab(vocab_size: int = 384, pre: str = "smollm", specials: list[str] | None = None,
               user_defined: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    """Byte-level BPE tables (tokens, "a b" merges, gguf token types) trained on a small fixed corpus,
    then USER_DEFINED tokens, then UNUSED padding up to exactly `vocab_size`."""
    specials = list(SPECIALS if specials is None else specials)
    user_defined = list(USER_DEFINED_TOKENS if user_defined is None else user_defined)
    model = json.loads(train_tiny_tokenizer(vocab_size - len(user_defined), pre, specials).to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in specials else 1 for t in tokens]  # gguf TokenType: 1 NORMAL, 3 CONTROL
    for t in user_defined:
        tokens.append(t)
        types.append(4)  # USER_DEFINED
    while len(tokens) < vocab_size:
        tokens.append(f"<|unused_{len(tokens)}|>")
        types.append(5)  # UNUSED
    return tokens, merges, types


def tiny_metadata(vocab_size: int = 384, pre: str = "smollm", specials: list[str] | None = None,
                  chat_template: str | None = SMOLLM2_TEMPLATE, bos: str = "<|im_start|>",
                  eos: str = "<|im_end|>") -> dict:
    """The tokenizer part of a GGUF header, as lm.gguf.read_metadata returns it (no file needed)."""
    tokens, merges, types = tiny_vocab(vocab_size, pre, specials)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": tokens.index(bos), "tokenizer.ggml.eos_token_id": tokens.index(eos),
            "tokenizer.ggml.add_bos_token": False}
    if chat_template is not None:
        meta["tokenizer.chat_template"] = chat_template
    return meta


def random_state_dict(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights; norms and biases are randomized too so that a mix-up between them shows."""
    torch.manual_seed(seed)
    model = Transformer(cfg).init_weights(seed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + 0.1 * torch.randn_like(v)
        elif k.endswith(".bias"):
            sd[k] = 0.05 * torch.randn_like(v)
        elif v.dim() == 2:
            sd[k] = 0.05 * torch.randn_like(v)  # larger than init so logits are not all ~0
    if cfg.tie_embeddings:
        sd.pop("output.weight", None)
    return sd


def llama_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (HF rotate-half -> GGML interleaved)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our Transformer state dict -> llama.cpp tensor names and layouts."""
    out = {"token_embd.weight": sd["tok_embeddings.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["output.weight"]
    H, KV, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    for i in range(cfg.n_layers):
        o, p = f"layers.{i}.", f"blk.{i}."
        q, k, v = sd[o + "attention.wqkv.weight"].split([H * D, KV * D, KV * D])
        if cfg.arch == "llama":
            q, k = llama_permute(q, H), llama_permute(k, KV)
        out.update({p + "attn_q.weight": q, p + "attn_k.weight": k, p + "attn_v.weight": v})
        if cfg.qkv_bias:
            qb, kb, vb = sd[o + "attention.wqkv.bias"].split([H * D, KV * D, KV * D])
            out.update({p + "attn_q.bias": qb, p + "attn_k.bias": kb, p + "attn_v.bias": vb})
        gate, up = sd[o + "feed_forward.w13.weight"].split(cfg.hidden_dim)
        out.update({
            p + "attn_output.weight": sd[o + "attention.wo.weight"],
            p + "attn_norm.weight": sd[o + "attention_norm.weight"],
            p + "ffn_norm.weight": sd[o + "ffn_norm.weight"],
            p + "ffn_gate.weight": gate, p + "ffn_up.weight": up,
            p + "ffn_down.weight": sd[o + "feed_forward.w2.weight"],
        })
    return {k: v.detach().float().contiguous().numpy() for k, v in out.items()}


def write_tiny_gguf(path: str | Path, arch: str = "llama", vocab: int = 384, *, dim: int = 64, n_layers: int = 2,
                    n_heads: int = 4, n_kv_heads: int = 2, hidden_dim: int = 128, max_seq_len: int = 256,
                    tie_embeddings: bool = True, qtype: str = "F32", types: dict[str, str] | None = None,
                    raw_tensors: dict[str, tuple[np.ndarray, str]] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0,
                    chat_template: str | None = "default", pre: str | None = None,
                    rope_theta: float = 10000.0, norm_eps: float = 1e-5) -> TinyGGUF:
    """Write a tiny model as GGUF.

    qtype: GGML type of every 2-D weight ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"); norms and
    biases stay F32, as llama.cpp keeps them. `types` overrides it per GGUF tensor name. `raw_tensors` gives
    already-encoded blocks for a tensor ({name: (uint8 array (rows, bytes), "Q6_K")}), for types gguf cannot
    quantize. Any `arch` name is written (llama's tensor layout), so unsupported architectures can be tested;
    qwen2 gets q/k/v biases and no Q/K permutation.
    """
    path = Path(path)
    cfg = ModelConfig(arch=arch if arch in ("llama", "qwen2") else "llama", vocab_size=vocab, dim=dim,
                      n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=hidden_dim,
                      max_seq_len=max_seq_len, rope_theta=rope_theta, norm_eps=norm_eps,
                      tie_embeddings=tie_embeddings, qkv_bias=arch == "qwen2")
    sd = state_dict if state_dict is not None else random_state_dict(cfg, seed)
    pre = pre or ("qwen2" if arch == "qwen2" else "smollm")
    tokens, merges, token_types = tiny_vocab(vocab, pre=pre)
    if chat_template == "default":
        chat_template = QWEN2_TEMPLATE if arch == "qwen2" else SMOLLM2_TEMPLATE

    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(n_layers)
    w.add_context_length(max_seq_len)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(hidden_dim)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(norm_eps)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(dim // n_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)

    types = types or {}
    raw_tensors = raw_tensors or {}
    for name, arr in gguf_tensors(sd, cfg).items():
        if name in raw_tensors:
            blocks, tname = raw_tensors[name]
            w.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType[tname])
            continue
        tname = types.get(name, qtype if arr.ndim == 2 else "F32")
        if tname == "F32":
            w.add_tensor(name, arr.astype(np.float32))
        elif tname == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            qt = gguf.GGMLQuantizationType[tname]
            w.add_tensor(name, quants.quantize(arr, qt), raw_dtype=qt)  # NotImplementedError for K-quants
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path, cfg, sd, tokens, merges, token_types)
