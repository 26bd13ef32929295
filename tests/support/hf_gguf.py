"""Tiny random HF `transformers` models of every architecture docent loads, written as GGUF the way llama.cpp's
convert_hf_to_gguf.py writes them, so that docent's logits can be checked against transformers' on the same
weights.

What the converter does, per family (and what lm/gguf.py must undo or use):
- llama / mistral (LlamaModel): Q and K rows permuted for GGML's interleaved RoPE; llama3 RoPE scaling written as
  a `rope_freqs` tensor of per-frequency factors; mistral is written as `llama`.
- qwen2 / qwen3: names only (qwen2's q/k/v biases, qwen3's attn_q_norm / attn_k_norm).
- gemma2 / gemma3: every `*norm.weight` written as 1 + w; the four norms of a block are attn_norm,
  post_attention_norm, ffn_norm (pre-FFN) and post_ffw_norm; soft-capping and the window in the metadata.
- phi3: qkv_proj as attn_qkv and gate_up_proj as ffn_up, fused as they are; longrope's factors as
  rope_factors_short / rope_factors_long tensors with the attention factor in the metadata.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

from tests.support.tiny_gguf import llama_permute, tiny_vocab

HF_ARCHS = ("llama", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
VOCAB = 384


def hf_config(arch: str, **overrides):
    """A tiny transformers config of `arch` (llama3: Llama with llama3 RoPE scaling)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, attn_implementation="eager")
    theta = {"rope_type": "default", "rope_theta": 10000.0}
    if arch in ("llama", "llama3"):
        rope = theta if arch == "llama" else {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 32}
        cls, kw = tf.LlamaConfig, {"rope_parameters": rope, "tie_word_embeddings": arch == "llama3"}
    elif arch == "mistral":
        cls, kw = tf.MistralConfig, {"sliding_window": None, "rope_parameters": theta}
    elif arch == "qwen2":
        cls, kw = tf.Qwen2Config, {"rope_parameters": {**theta, "rope_theta": 1e6}, "tie_word_embeddings": True}
    elif arch == "qwen3":
        cls, kw = tf.Qwen3Config, {"head_dim": 32, "rope_parameters": theta}
    elif arch == "gemma2":
        cls, kw = tf.Gemma2Config, {"head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8,
                                    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                                    "tie_word_embeddings": True, "rope_parameters": theta}
    elif arch == "gemma3":
        cls, kw = tf.Gemma3TextConfig, {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32,
                                        "sliding_window": 8, "tie_word_embeddings": True, "rope_parameters": {
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                            "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}
    elif arch == "phi3":
        cls, kw = tf.Phi3Config, {"num_key_value_heads": 4, "sliding_window": None, "rope_parameters": theta,
                                  "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    else:
        raise ValueError(arch)
    cfg = cls(**{**common, **kw, **overrides})
    return cfg


def hf_model(arch: str, seed: int = 0, **overrides):
    """A random tiny transformers model in float32 eval mode; norms and biases are randomised too, so a mix-up
    between them (or a missing gemma 1 + w) shows in the logits."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = hf_config(arch, **overrides)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    gemma = arch.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn_like(p))  # gemma's norms multiply by 1 + w
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def _llama3_factors(cfg) -> np.ndarray:
    """convert_hf_to_gguf's rope_freqs for rope_type llama3: the divisor of each frequency."""
    rope = cfg.rope_parameters
    dim = cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def gguf_tensors(model, arch: str) -> dict[str, np.ndarray]:
    """The HF state dict renamed, permuted and offset as convert_hf_to_gguf.py writes it."""
    cfg = model.config
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    gemma = arch.startswith("gemma")
    if gemma:
        sd = {k: v + 1 if k.endswith("norm.weight") else v for k, v in sd.items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        h, p = f"model.layers.{i}.", f"blk.{i}."
        out[p + "attn_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[p + "attn_output.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[p + "ffn_down.weight"] = sd[h + "mlp.down_proj.weight"]
        if arch == "phi3":
            out[p + "attn_qkv.weight"] = sd[h + "self_attn.qkv_proj.weight"]
            out[p + "ffn_up.weight"] = sd[h + "mlp.gate_up_proj.weight"]
        else:
            q, k = sd[h + "self_attn.q_proj.weight"], sd[h + "self_attn.k_proj.weight"]
            if arch in ("llama", "llama3", "mistral"):
                q, k = llama_permute(q, cfg.num_attention_heads), llama_permute(k, cfg.num_key_value_heads)
            out.update({p + "attn_q.weight": q, p + "attn_k.weight": k, p + "attn_v.weight": sd[h + "self_attn.v_proj.weight"],
                        p + "ffn_gate.weight": sd[h + "mlp.gate_proj.weight"], p + "ffn_up.weight": sd[h + "mlp.up_proj.weight"]})
        for b in ("q", "k", "v"):
            if h + f"self_attn.{b}_proj.bias" in sd:
                out[p + f"attn_{b}.bias"] = sd[h + f"self_attn.{b}_proj.bias"]
        if h + "self_attn.q_norm.weight" in sd:
            out[p + "attn_q_norm.weight"] = sd[h + "self_attn.q_norm.weight"]
            out[p + "attn_k_norm.weight"] = sd[h + "self_attn.k_norm.weight"]
        if gemma:
            out[p + "post_attention_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
            out[p + "ffn_norm.weight"] = sd[h + "pre_feedforward_layernorm.weight"]
            out[p + "post_ffw_norm.weight"] = sd[h + "post_feedforward_layernorm.weight"]
        else:
            out[p + "ffn_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
    out = {k: v.numpy() for k, v in out.items()}
    rope = cfg.rope_parameters if not arch.startswith("gemma3") else {}
    if rope.get("rope_type") == "llama3":
        out["rope_freqs.weight"] = _llama3_factors(cfg)
    if rope.get("rope_type") == "longrope":
        out["rope_factors_long.weight"] = np.array(rope["long_factor"], dtype=np.float32)
        out["rope_factors_short.weight"] = np.array(rope["short_factor"], dtype=np.float32)
    return out


def write_hf_gguf(path: str | Path, model, arch: str, *, qtype: str = "F32", sliding_window: int | None = None,
                  chat_template: str | None = None) -> Path:
    """Write `model` (from hf_model) as llama.cpp's converter would, with tiny_vocab's tokenizer tables.
    sliding_window: write `attention.sliding_window` for a llama-written model (mistral) too."""
    from gguf import quants

    cfg = model.config
    name = {"llama3": "llama", "mistral": "llama"}.get(arch, arch)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(path, name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    rope = cfg.rope_parameters
    w.add_rope_freq_base((rope.get("full_attention") or rope)["rope_theta"])
    if arch in ("llama", "llama3", "mistral", "phi3"):
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if arch.startswith("gemma") or sliding_window or (arch == "phi3" and cfg.sliding_window):
        w.add_sliding_window(sliding_window or cfg.sliding_window)
    if rope.get("rope_type") == "longrope":
        original = rope["original_max_position_embeddings"]
        scale = cfg.max_position_embeddings / original
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
    tokens, merges, types = tiny_vocab(cfg.vocab_size, pre="smollm")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    if chat_template:
        w.add_chat_template(chat_template)
    for tname, arr in gguf_tensors(model, arch).items():
        kind = qtype if arr.ndim == 2 else "F32"
        if kind == "F32":
            w.add_tensor(tname, arr.astype(np.float32))
        else:
            qt = gguf.GGMLQuantizationType[kind]
            w.add_tensor(tname, quants.quantize(arr, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
