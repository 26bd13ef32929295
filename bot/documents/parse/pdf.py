"""PDF text for bot.documents.parse.formats: its `parse_bytes` calls `parse_pdf` in the limited child process.

One section per page, without the text a reader of the page never sees (pdf_hidden). The ways a PDF can be
bad are told apart, each with its own message: damaged or cut off, password-protected, scanned (no text layer),
or a "flate bomb": compressed streams that unpack to far more than any real document holds (a 1 MB file can
unpack to 1 GB). pypdf stops inflating one stream at its own limit and raises; a bomb it never inflates (in a
form it skips) leaves the pages without text, so before calling such a PDF scanned its streams are measured
here, up to INFLATED_MAX bytes.
"""

from __future__ import annotations

import io
import re
import zlib
from collections import Counter

from bot.documents.parse.document import DocumentError, Section, clean_text, empty_error
from bot.documents.parse.pdf_hidden import drop_hidden_text
from bot.telegram import file_texts

INFLATED_MAX = 256 * 2**20  # all zlib streams together, unpacked (formats.ZIP_MAX_TOTAL: the same, for .docx)
_STREAM_START = re.compile(rb"(?<!end)stream\r?\n")
# Input is fed in small slices (what follows a stream's end is copied once, into unused_data) and output taken
# in bounded pieces, so measuring a bomb never holds it in memory.
_IN, _OUT = 2**14, 2**20


def parse_pdf(data: bytes, name: str) -> tuple[list[Section], int]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    corrupt = DocumentError("corrupt", file_texts.damaged_pdf(name))
    if b"%%EOF" not in data[-4096:] and b"%%EOF" not in data:
        raise corrupt  # a cut-off download: pypdf would guess at the rest
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError):
                opened = 0
            if not opened:
                raise DocumentError("encrypted", file_texts.password_protected(name))
        pages = [_clean_pdf_text(_visible_text(p, reader)) for p in reader.pages]
    except (DocumentError, MemoryError, RecursionError):
        raise
    except FileNotDecryptedError:
        raise DocumentError("encrypted", file_texts.password_not_removed(name)) from None
    except LimitReachedError:
        raise _bomb(name) from None
    except Exception:  # pypdf raises many types on damaged input
        raise corrupt from None
    if not pages:
        raise empty_error(name)
    if not any(p.strip() for p in pages):
        if inflated_size(data, INFLATED_MAX) > INFLATED_MAX:
            raise _bomb(name)
        raise DocumentError("scanned", file_texts.scanned_pdf(name))
    return [Section(text, page=i) for i, text in enumerate(drop_running_lines(pages), 1)], len(pages)


def _bomb(name: str) -> DocumentError:
    return DocumentError("too_large", file_texts.pdf_bomb(name))


def inflated_size(data: bytes, budget: int) -> int:
    """How many bytes the zlib streams of a PDF unpack to, all together; counting stops once past `budget`,
    so the cost is bounded by the budget whatever the file claims."""
    total, view = 0, memoryview(data)
    for match in _STREAM_START.finditer(data):
        inflater, pos = zlib.decompressobj(), match.end()
        try:
            while not inflater.eof and total <= budget:
                if inflater.unconsumed_tail:
                    piece = inflater.unconsumed_tail
                else:
                    piece, pos = view[pos : pos + _IN], pos + _IN
                    if not piece:
                        break
                total += len(inflater.decompress(piece, _OUT))
        except zlib.error:  # not zlib data (an image, a raw stream) or damaged: it unpacks to nothing more
            pass
        if total > budget:
            break
    return total


def _visible_text(page, reader) -> str:
    """A page's text without what its reader never sees (bot.documents.parse.pdf_hidden)."""
    drop_hidden_text(page, reader)
    return page.extract_text() or ""


def _clean_pdf_text(text: str) -> str:
    text = re.sub(r"(?<=[a-z])-\n(?=[a-z])", "", text)  # words hyphenated across lines
    return clean_text(text)


def _running_key(line: str) -> str:
    """A page-edge line with its numbers masked: "Annual Report 2023 · page 4" and "… page 5" are one line."""
    return re.sub(r"\d+", "#", " ".join(line.lower().split()))


def drop_running_lines(pages: list[str], edge: int = 1) -> list[str]:
    """The pages without their running headers and footers: the first or last line (`edge` lines) of at
    least half the pages (and of three), numbers aside (a title, "Page 4 of 20", a bare page number). Left in,
    such a line is read into the sentence that runs on across the page break ("…the committee Annual Report
    2023 Page 4 decided…"), and from there into answers and summaries."""
    if len(pages) < 3:
        return pages
    split = [[line for line in page.split("\n")] for page in pages]

    def edges(lines: list[str]) -> set[int]:
        filled = [i for i, line in enumerate(lines) if line.strip()]
        return set(filled[:edge] + filled[-edge:])

    seen = Counter(key for lines in split for key in {_running_key(lines[i]) for i in edges(lines)})
    running = {key for key, n in seen.items() if key and n >= max(3, (len(pages) + 1) // 2)}
    if not running:
        return pages
    return [clean_text("\n".join(line for i, line in enumerate(lines)
                                 if i not in edges(lines) or _running_key(line) not in running))
            for lines in split]
