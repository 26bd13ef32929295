"""Model directories and training checkpoints, always written atomically.

A model directory (what `docent chat --model DIR` loads, through lm/load.py):

    config.json          ModelConfig (or LSTMConfig: "arch": "lstm")
    model.safetensors    weights (a tied output head is stored once, as tok_embeddings.weight)
    tokenizer.json       + tokenizer_config.json (specials, chat template)
    meta.json            free-form facts about the run (mode, steps, val_loss, base, created, ...)

A LoRA version directory holds no base weights: adapter_config.json names the base (a hub name, a GGUF path
or another model directory) with rank/alpha/targets, and lora.safetensors the adapter; tokenizer.json and
meta.json as above.

Every file is written to a temporary name in the same directory and then `os.replace`d, so a reader (or a
run that crashes mid-write) only ever sees the previous complete file or the new one; meta.json is written
last and marks a finished directory. A training checkpoint (`checkpoint.pt`: model, optimizer, step, RNG
state) is one file written the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

from lm.config import ModelConfig
from lm.lstm import LSTMLM, LSTMConfig

CHECKPOINT = "checkpoint.pt"


class CheckpointError(ValueError):
    pass


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it over `path`. On failure the
    temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result should look like any other
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(clean, str(p), metadata=metadata))


# ------------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """A training checkpoint: any dict of tensors, plain values and optimizer/RNG states."""
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable checkpoint: {e}") from e


# ------------------------------------------------------------------------------------------- model directories

def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (safetensors refuses two names for one storage)."""
    sd = dict(model.state_dict())
    cfg = getattr(model, "config", None)
    if isinstance(cfg, ModelConfig) and cfg.tie_embeddings:
        sd.pop("output.weight", None)
    return sd


def save_tokenizer(directory: Path, tokenizer) -> None:
    """Write the tokenizer's files into `directory`, each appearing whole."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tok.") as tmp:
        tokenizer.save(tmp)
        for f in sorted(Path(tmp).iterdir()):
            os.replace(f, directory / f.name)  # same file system: each file appears whole


def save_model_dir(directory: Path, model: nn.Module, config: ModelConfig | LSTMConfig, tokenizer,
                   meta: dict[str, Any] | None = None) -> Path:
    """Write a complete, loadable model directory (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "config.json", json.dumps(_config_dict(config), indent=2))
    save_tensors(directory / "model.safetensors", model_state_dict(model))
    save_tokenizer(directory, tokenizer)
    atomic_write_text(directory / "meta.json", json.dumps(meta or {}, indent=2, default=str))
    return directory


def save_lora_dir(directory: Path, model: nn.Module, lora_config, base: str, tokenizer=None,
                  meta: dict[str, Any] | None = None) -> Path:
    """Write a LoRA version directory: adapter weights + the name of the base they apply to."""
    from lm.lora import lora_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / "lora.safetensors", lora_state_dict(model))
    atomic_write_text(directory / "adapter_config.json", json.dumps({"base": base, **lora_config.to_dict()}, indent=2))
    if tokenizer is not None:
        save_tokenizer(directory, tokenizer)
    atomic_write_text(directory / "meta.json", json.dumps(meta or {}, indent=2, default=str))
    return directory


def _config_dict(config: ModelConfig | LSTMConfig) -> dict:
    from dataclasses import asdict

    return asdict(config)


def build_model(config_dict: dict) -> tuple[nn.Module, ModelConfig | LSTMConfig]:
    """An uninitialised model for a config dict (as read from config.json)."""
    from lm.model import Transformer

    if config_dict.get("arch") == "lstm":
        cfg = LSTMConfig(**config_dict)
        return LSTMLM(cfg), cfg
    cfg = ModelConfig(**config_dict)
    return Transformer(cfg), cfg
