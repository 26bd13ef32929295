"""The sandbox a parse runs in: a child Python process with a wall-time limit, an address-space limit
(RLIMIT_AS) and a CPU-time backstop, so a hostile or pathological file can neither hang nor crash the bot;
the child is killed on timeout.

The parent (`run_in_child`) names the parser for the child to run and sends it the file on stdin; the child
(`child_main`) sets its limits, parses, and answers one JSON object on stdout. A child that dies without an
answer is reported as running out of time or memory, or as a damaged file.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.documents.parse.document import CODES, DocumentError, ParsedDocument
from bot.telegram import file_texts

log = logging.getLogger(__name__)

# What the child runs: (file bytes, file name, mime type) -> the document, or DocumentError.
Parser = Callable[[bytes, str, str | None], ParsedDocument]


def run_in_child(
    parser: Parser, data: bytes, name: str, mime: str | None, timeout_s: float, memory_mb: int
) -> ParsedDocument:
    """`parser(data, name, mime)` in a child process limited to `timeout_s` seconds and `memory_mb` MiB.

    The child imports `parser` itself, by its module and name, so it must be a module-level function.
    """
    args = json.dumps({
        "parser": f"{parser.__module__}:{parser.__qualname__}",
        "filename": name, "mime": mime, "memory_mb": memory_mb, "cpu_s": timeout_s,
    })  # fmt: skip
    root = str(Path(__file__).resolve().parents[3])  # so the child finds `bot` even when not installed
    # A small environment: the child handles hostile input and has no use for the bot's secrets.
    env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    # `-c`, not `-m bot.documents.parse.sandbox`: the package imports this module, and runpy warns then.
    cmd = [sys.executable, "-c", "from bot.documents.parse.sandbox import child_main; child_main()", args]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:  # subprocess.run has already killed the child
        raise _timeout_error(name, timeout_s) from None
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = None
    if isinstance(result, dict) and result.get("ok"):
        return ParsedDocument.from_json(result["doc"])
    if isinstance(result, dict) and result.get("code") in CODES:
        raise DocumentError(result["code"], result["message"])
    # No answer: the child died. Under RLIMIT_AS a failed allocation in C code can abort the process
    # instead of raising MemoryError, so a death by signal is reported as running out of memory.
    log.warning(
        "parse child failed on %r: exit %s, stderr tail %r", name, proc.returncode, proc.stderr[-2000:]
    )
    if proc.returncode == -signal.SIGXCPU:
        raise _timeout_error(name, timeout_s)
    if proc.returncode < 0 or b"MemoryError" in proc.stderr:
        raise _memory_error(name, memory_mb)
    raise DocumentError("corrupt", file_texts.parser_failed(name))


_CHILD_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV"}


def _timeout_error(name: str, timeout_s: float) -> DocumentError:
    return DocumentError("timeout", file_texts.took_too_long(name, timeout_s))


def _memory_error(name: str, memory_mb: int) -> DocumentError:
    return DocumentError("memory", file_texts.needed_too_much_memory(name, memory_mb))


def child_main() -> None:
    """Entry point of the child: limits first, then parse stdin, answer one JSON object on stdout."""
    import resource

    args = json.loads(sys.argv[1])
    limit = args["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = int(args["cpu_s"]) + 2  # a backstop in case the parent is gone and cannot kill us
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints from libraries must not corrupt the answer
    data = sys.stdin.buffer.read()
    module, _, function = args["parser"].partition(":")
    parser = getattr(importlib.import_module(module), function)
    try:
        doc = parser(data, args["filename"], args["mime"])
        answer = {"ok": True, "doc": doc.to_json()}
    except DocumentError as e:
        answer = {"ok": False, "code": e.code, "message": e.message}
    except MemoryError:
        e = _memory_error(args["filename"], args["memory_mb"])
        answer = {"ok": False, "code": e.code, "message": e.message}
    except RecursionError:
        answer = {
            "ok": False,
            "code": "corrupt",
            "message": file_texts.too_deep(args["filename"]),
        }
    out.write(json.dumps(answer))
    out.flush()
