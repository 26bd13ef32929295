"""Our own decode-row kernels (decode.cpp): a C++ PyTorch extension for AVX2 + FMA + F16C CPUs.

lm.quant sends decode rows (up to KERNEL_MAX_ROWS) of its int4 and int8 linears here when the extension is
loaded, and to torch's own kernels (the pure-PyTorch fallback the tests compare against) when it is not. Both
kernels quantize the activation rows to int8 in blocks of 32, as llama.cpp does for its q4/q8 dot products, and
read each weight once per call; decode.cpp's header says how. On a CPU with AVX-512 VNNI the library takes its
VNNI versions of both kernels, chosen at run time (the library itself is built for AVX2 and loads anywhere);
`LM_KERNELS_VNNI=0` or use_vnni(False) keeps the AVX2 ones (for tests and benchmarks).

`make kernels` (a step of `make chat`, `make run` and `make test`) runs `python -m lm.kernels`, which compiles
decode.cpp with the machine's compiler into KERNELS_DIR/<hash of the source, torch's version and the flags>/,
once: later processes only load the library. load() never compiles and never raises: without the library
(no compiler, a failed build, a CPU without AVX2, `LM_KERNELS=0`) it says why in one log line and returns False.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decode.cpp")
KERNELS_DIR = Path(os.environ.get("DOCENT_KERNELS_DIR", Path.home() / ".cache" / "docent" / "kernels"))
CPU_FLAGS = {"avx2", "fma", "f16c"}  # what decode.cpp's instructions need
CXX_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w"]

_loaded: bool | None = None  # load()'s answer, once per process


def unsupported_reason() -> str | None:
    """Why the kernels cannot run here (`LM_KERNELS=0`, the CPU's flags), or None."""
    if os.environ.get("LM_KERNELS") == "0":
        return "LM_KERNELS=0"
    from lm.quant import cpu_flags

    missing = CPU_FLAGS - cpu_flags()
    return f"the CPU lacks {', '.join(sorted(missing))}" if missing else None


def _compile_command(out: Path) -> list[str]:
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    # torch ships its own libgomp.so.1: linking by that soname makes at::parallel_for share torch's OpenMP pool
    return [os.environ.get("CXX", "c++"), *CXX_FLAGS, abi, *includes, str(SOURCE), "-o", str(out),
            f"-L{torch_lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]


def library_path() -> Path:
    """Where the compiled library for this source, torch version and compiler flags lives."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(CXX_FLAGS).encode())
    return KERNELS_DIR / key.hexdigest()[:16] / "docent_kernels.so"


def build() -> Path:
    """Compile decode.cpp unless this version is already built; returns the library's path. Raises
    RuntimeError with the compiler's output when the build fails or the CPU cannot run the kernels."""
    reason = unsupported_reason()
    if reason is not None and reason != "LM_KERNELS=0":
        raise RuntimeError(f"decode kernels not built: {reason}")
    path = library_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.part")
    os.close(fd)
    try:
        try:
            done = subprocess.run(_compile_command(Path(tmp)), capture_output=True, text=True)
        except OSError as e:  # no compiler at all
            raise RuntimeError(f"decode kernels failed to compile: {e}") from e
        if done.returncode != 0:
            raise RuntimeError(f"decode kernels failed to compile:\n{done.stderr[-4000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build or load never sees half a library
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load() -> bool:
    """Register the ops under torch.ops.docent_kernels if the library is built; False (with one log line
    saying why) when it is not, or cannot be loaded. Never compiles, never raises."""
    global _loaded
    if _loaded is None:
        _loaded = _try_load()
    return _loaded


def _try_load() -> bool:
    reason = unsupported_reason()
    try:
        path = library_path() if reason is None else None
    except OSError as e:  # the source is missing from an unusual install
        reason = str(e)
    if reason is None and not path.is_file():
        reason = "not built (make kernels)"
    if reason is None:
        try:
            torch.ops.load_library(str(path))
            torch.ops.docent_kernels.use_vnni(os.environ.get("LM_KERNELS_VNNI") != "0")
            return True
        except Exception as e:
            reason = f"could not load {path}: {e}"
    log.info("decode kernels off, using torch's: %s", reason)
    return False


def use_vnni(enabled: bool) -> bool:
    """Take the VNNI kernels (where the CPU has them) or the AVX2 ones; returns whether the VNNI ones are taken.
    The library must be loaded."""
    return torch.ops.docent_kernels.use_vnni(enabled)


def vnni_taken() -> bool:
    """Whether int4_rows and int8_rows take their VNNI versions now. The library must be loaded."""
    return torch.ops.docent_kernels.vnni_taken()


def build_and_load() -> bool:
    """build() then load(): for tests and benchmarks, which need the kernels wherever the CPU can run them."""
    global _loaded
    build()
    _loaded = None
    return load()


def main() -> int:
    """`python -m lm.kernels`: build (the `make kernels` step). A CPU or compiler that cannot build them is
    not an error: everything runs on torch's kernels then, and the message says so."""
    try:
        print(f"decode kernels: {build()}")
    except RuntimeError as e:
        print(f"{e}\ndecode rows will use torch's kernels", file=sys.stderr)
    return 0


def int4_layout(q4: torch.Tensor, q4_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lm.quant.Int4Linear's buffers -> int4_rows' (q, sz): the same 4-bit values and bf16 scales, rearranged.

    int4_rows wants each output row's groups of 32 inputs as 16 bytes, byte j = q[j] | q[j + 16] << 4, and
    sz (N, 2, K / 32): scales then zeros. q4 is in torch's packing for this CPU (unpack_int4pack).
    """
    q = unpack_int4pack(q4)  # (N, K)
    n, k = q.shape
    q = q.view(n, k // 32, 2, 16)
    packed = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, k // 2).contiguous()
    return packed, q4_scales.permute(1, 2, 0).contiguous()


def unpack_int4pack(q4: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """`aten._convert_weight_to_int4pack_for_cpu`'s (N, K / 2) bytes -> the (N, K) 4-bit values, as uint8.

    torch packs output rows in blocks of `block` (int4pack_block(): 32 on AVX2, 64 on AVX-512), each stored as
    (K, block / 2) bytes: byte [k, j] = q[j, k] | q[j + block / 2, k] << 4. A last, shorter block holds
    neighbouring rows: byte [k, j] = q[2 j, k] | q[2 j + 1, k] << 4.
    """
    block = block or int4pack_block()
    n, k = q4.shape[0], q4.shape[1] * 2
    flat = q4.reshape(-1)
    full = n // block * block
    blocks = flat[: full * k // 2].view(n // block, k, block // 2)
    q = torch.cat([blocks & 15, blocks >> 4], 2).permute(0, 2, 1).reshape(full, k)  # (full, K)
    if full == n:
        return q.contiguous()
    tail = flat[full * k // 2:].view(k, (n - full) // 2)
    rest = torch.stack([tail & 15, tail >> 4], 2).reshape(k, n - full).t()  # (N - full, K)
    return torch.cat([q, rest])


@functools.cache
def int4pack_block() -> int:
    """The block of output rows torch's int4 packing interleaves on this CPU (its layout depends on the vector
    width torch dispatches to), found by packing a probe and reading it back; 0 when no known layout fits, and
    then int4 rows stay on torch's kernel."""
    q = torch.randint(0, 16, (160, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    for block in (32, 64, 16, 128):  # 160 rows: whole blocks and a shorter last one for each
        if torch.equal(unpack_int4pack(packed, block).to(torch.int32), q):
            return block
    log.info("torch's int4 packing is not one lm.kernels knows: int4 rows use torch's kernel")
    return 0
