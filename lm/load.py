"""The one model loader: a model directory written by docent, or a GGUF (a file, or a hub name in the cache).

    model, tokenizer, meta = load_model("smollm2-135m", cache_dir)                # float32: training, evaluation
    model, tokenizer = load_chat_model(name_or_path, cache_dir, weights="int4")   # for generation

A directory is a docent model directory (lm/checkpoint.py writes them: trained from scratch, fully fine-tuned,
or a LoRA version whose adapter is applied to the base it names); anything else is a GGUF file or a hub name
(lm.hub), read by lm.gguf. `cache_dir` is where hub names are pulled to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn
from safetensors.torch import load_file

from lm.checkpoint import CheckpointError, build_model
from lm.config import ModelConfig


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` names a model directory (loaded by load_model_dir) rather than a GGUF file or hub name."""
    return Path(path).expanduser().is_dir()


def load_model(name_or_path: str | Path, cache_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model fp32, tokenizer, meta) from a hub name, a GGUF file or a model directory."""
    from lm import hub
    from lm.gguf import read_model
    from lm.tokenizer import Tokenizer

    if is_model_dir(name_or_path):
        return load_model_dir(Path(name_or_path).expanduser(), cache_dir)
    gguf_path = hub.resolve(str(name_or_path), cache_dir)
    model, g = read_model(gguf_path)
    return model, Tokenizer.from_gguf(g.metadata), {"base": str(name_or_path), "gguf": str(gguf_path)}


def load_model_dir(directory: Path, cache_dir: Path, merge_lora: bool = True) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, meta) from a directory written by save_model_dir or save_lora_dir.
    A LoRA directory loads its base and applies the adapter (merged into the weights unless merge_lora=False)."""
    from lm.tokenizer import Tokenizer

    directory = Path(directory)
    if not ((directory / "config.json").is_file() or (directory / "adapter_config.json").is_file()):
        raise CheckpointError(f"{directory}: not a model directory (no config.json or adapter_config.json)")
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (directory / "adapter_config.json").is_file():
        from lm.lora import LoRAConfig, apply_lora, load_lora_state_dict
        from lm.lora import merge_lora as merge

        acfg = json.loads((directory / "adapter_config.json").read_text())
        if "base" not in acfg:
            raise CheckpointError(f"{directory}/adapter_config.json names no base model")
        model, tokenizer, _ = load_model(acfg["base"], cache_dir)
        apply_lora(model, LoRAConfig.from_dict(acfg))
        load_lora_state_dict(model, load_file(str(directory / "lora.safetensors")))
        if merge_lora:
            merge(model)
        if (directory / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        return model.eval(), tokenizer, meta
    model, cfg = build_model(json.loads((directory / "config.json").read_text()))
    sd = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = isinstance(cfg, ModelConfig) and cfg.tie_embeddings
    missing = [k for k in missing if not (tied and k == "output.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not match config.json: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model.eval(), Tokenizer.from_file(directory / "tokenizer.json"), meta


def load_chat_model(name_or_path: str | Path, cache_dir: Path, weights: str = "int4", threads: int = 0,
                    max_seq_len: int | None = None, use_cache: bool = True) -> tuple[nn.Module, Any]:
    """(model, tokenizer) ready to generate, with torch's threads set (lm.runtime.set_threads) and the weights in
    the `weights` format (lm.quant.MODES). A model directory (from scratch, full or LoRA fine-tune; LoRA merged)
    must hold a Transformer; a GGUF goes through lm.runtime's converted-weights cache, its context capped at
    max_seq_len."""
    from lm.model import Transformer
    from lm.quant import MODES, quantize_model
    from lm.runtime import load_converted, set_threads

    if weights not in MODES:
        raise ValueError(f"unknown weights format {weights!r}; choose one of {', '.join(MODES)}")
    set_threads(threads)
    if is_model_dir(name_or_path):
        path = Path(name_or_path).expanduser()
        model, tokenizer, _ = load_model_dir(path, cache_dir)
        if not isinstance(model, Transformer):
            raise ValueError(f"{path} holds a {type(model).__name__}; only Transformer models can chat")
        return quantize_model(model.eval(), weights), tokenizer
    from lm import hub

    return load_converted(hub.resolve(str(name_or_path), cache_dir), weights, max_seq_len, use_cache)
