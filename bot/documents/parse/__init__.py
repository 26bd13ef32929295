"""Turn an uploaded file (PDF, DOCX, HTML, Markdown, plain text) into sections of clean text.

`parse_document` is what callers use: it checks the size, sniffs the type (sniff.py), then runs the real
parser (`formats.parse_bytes`; PDFs are read by pdf.py) in a child Python process with a wall-time limit
and an address-space limit (sandbox.py), so a hostile or pathological file can neither hang nor crash
the bot; the child is killed on timeout. It blocks, so async code calls it through `asyncio.to_thread`.

Every failure a person can cause is a `DocumentError(code, message)` whose message can be shown to
them as is (worded in bot/telegram/file_texts.py). Nothing is returned half-done: a document either parses
completely or raises.
"""

from __future__ import annotations

from pathlib import Path

from bot.documents.parse.document import (
    MAX_NAME_CHARS,
    DocumentError,
    ParsedDocument,
    Section,
    clean_name,
    empty_error,
)
from bot.documents.parse.formats import parse_bytes
from bot.documents.parse.sandbox import run_in_child
from bot.documents.parse.sniff import detect_kind
from bot.telegram import file_texts
from bot.telegram.file_texts import SUPPORTED

MAX_BYTES = 20 * 2**20


def parse_document(
    data: bytes | Path,
    filename: str,
    mime: str | None = None,
    *,
    timeout_s: float = 120,
    memory_mb: int = 1024,
    max_bytes: int = MAX_BYTES,
) -> ParsedDocument:
    """Parse a document in a child process limited to `timeout_s` seconds and `memory_mb` MiB."""
    name = clean_name(filename)
    if isinstance(data, Path):
        size = data.stat().st_size  # before reading, so a huge file is never loaded
        if size > max_bytes:
            raise _too_large(name, size, max_bytes)
        data = data.read_bytes()
    data = bytes(data)
    if len(data) > max_bytes:
        raise _too_large(name, len(data), max_bytes)
    if not data.strip():
        raise empty_error(name)
    detect_kind(data, name, mime)  # cheap byte sniffing: reject .exe and friends without a child
    return run_in_child(parse_bytes, data, name, mime, timeout_s, memory_mb)


def _too_large(name: str, size: int, max_bytes: int) -> DocumentError:
    return DocumentError("too_large", file_texts.too_large(name, _size(size), _size(max_bytes)))


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB" if n >= 2**10 else f"{n} bytes"


__all__ = [
    "MAX_BYTES",
    "MAX_NAME_CHARS",
    "SUPPORTED",
    "DocumentError",
    "ParsedDocument",
    "Section",
    "clean_name",
    "detect_kind",
    "parse_document",
]
