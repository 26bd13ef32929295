"""Glue for running a chat model on this machine: thread count, and loading a GGUF into a fast weights format.

    model, tokenizer = load_converted(gguf_path, weights="int4")

(lm.load.load_chat_model is the entry point: it resolves a hub name or a model directory and sets the threads.)
The converted model is cached next to the GGUF
(`<file>.<weights>[.ctx<n>].v<version>[-p<int4 packing>].<size>-<mtime>.pt`, written atomically, loaded with
mmap) so that a second load skips the GGUF parsing, the dequantization and the re-quantization; it holds the
built tokenizer too (a large SentencePiece vocabulary takes seconds to rebuild).
If that directory is not writable the cache is skipped (with a log line), nothing else changes. Writing a new
one removes the same format's files left by an older cache version or an older copy of the GGUF.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from lm.kernels import int4pack_block
from lm.quant import quantize_model

log = logging.getLogger(__name__)
CACHE_VERSION = 4  # bump when the converted layout changes (3: int4 groups; 4: the other architectures)


def physical_cores() -> int:
    """CPUs this process may run on, counting hyperthread siblings once."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)  # no topology (containers, non-Linux): trust the affinity mask
    return max(1, len(cores))


def set_threads(n: int = 0) -> int:
    """Set torch's intra-op threads: n > 0 exactly, 0 = one per physical core. Returns the count used.

    Hyperthreads share a core's vector units, so more threads than cores slows a matmul-bound decode down.
    """
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0 = one per physical core), got {n}")
    n = n or physical_cores()
    torch.set_num_threads(n)
    return n


def _cache_prefix(gguf_path: Path, weights: str, max_seq_len: int | None) -> str:
    ctx = f".ctx{max_seq_len}" if max_seq_len else ""
    return f"{gguf_path.name}.{weights}{ctx}.v"


def converted_path(gguf_path: Path, weights: str, max_seq_len: int | None) -> Path:
    st = gguf_path.stat()
    prefix = _cache_prefix(gguf_path, weights, max_seq_len)
    # int4 weights are stored in torch's packing, which depends on the CPU's vector width: a cache made on another
    # CPU (a moved disk, a migrated VM) is not read as if it were this one's
    layout = f"-p{int4pack_block()}" if weights == "int4" else ""
    return gguf_path.with_name(f"{prefix}{CACHE_VERSION}{layout}.{st.st_size}-{st.st_mtime_ns}.pt")


def _remove_stale(cached: Path, gguf_path: Path, weights: str, max_seq_len: int | None) -> None:
    """Delete this GGUF's converted files of the same format from older cache versions or an older GGUF file
    (about 200 MB each), which nothing would load again. A process still reading one keeps its mapping."""
    prefix = _cache_prefix(gguf_path, weights, max_seq_len)
    for old in gguf_path.parent.iterdir():
        if old.name.startswith(prefix) and old.name.endswith(".pt") and old != cached:
            try:
                old.unlink()
                log.info("removed stale converted weights %s", old.name)
            except OSError as e:
                log.info("could not remove stale converted weights %s: %s", old.name, e)


def _skeleton(config, weights: str) -> torch.nn.Module:
    """A model of the right structure with meta tensors, ready for load_state_dict(assign=True)."""
    from lm.model import Transformer

    with torch.device("meta"):
        model = quantize_model(Transformer(config), weights)
    return model


def _read_cached(path: Path, weights: str):
    from lm.config import ModelConfig

    blob = torch.load(path, mmap=True, weights_only=True)
    config = ModelConfig(**blob["config"])
    model = _skeleton(config, weights)
    model.load_state_dict(blob["state_dict"], assign=True)
    if weights in ("bf16", "fp32") and config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.init_rope()
    return model.eval(), blob["metadata"], blob.get("tokenizer")


def _save_converted(path: Path, model: torch.nn.Module, metadata: dict, tokenizer: str) -> None:
    from dataclasses import asdict

    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    except OSError as e:
        log.info("not caching converted weights next to %s: %s", path.parent, e)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"config": asdict(model.config), "state_dict": model.state_dict(), "metadata": metadata,
                        "tokenizer": tokenizer}, f)
        os.replace(tmp, path)  # atomic: a concurrent loader never sees half a file
    except Exception:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_converted(path: Path, weights: str = "int4", max_seq_len: int | None = None, use_cache: bool = True):
    """A GGUF file with its weights in the `weights` format (see lm.quant.MODES) -> (model, tokenizer), through
    the converted-weights cache next to it."""
    from lm.gguf import read_model
    from lm.tokenizer import Tokenizer

    cached = converted_path(path, weights, max_seq_len)
    if use_cache and cached.is_file():
        try:
            model, metadata, tokenizer = _read_cached(cached, weights)
            return model, Tokenizer.from_gguf(metadata, prebuilt=tokenizer)
        except Exception as e:  # a stale or damaged cache file is not an error: rebuild it
            log.warning("ignoring converted-weights cache %s: %s", cached, e)
    model, g = read_model(path, max_seq_len=max_seq_len)
    g.state_dict.clear()  # the model holds the tensors; dropping these references lets conversion free them
    model = quantize_model(model, weights)
    metadata = {k: v for k, v in g.metadata.items()}
    tokenizer = Tokenizer.from_gguf(metadata)
    if use_cache:
        try:
            _save_converted(cached, model, metadata, tokenizer.serialized())
            _remove_stale(cached, path, weights, max_seq_len)
        except Exception as e:
            log.warning("could not cache converted weights at %s: %s", cached, e)
    return model, tokenizer
