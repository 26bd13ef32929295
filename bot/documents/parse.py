"""Turn an uploaded file (PDF, DOCX, HTML, Markdown, plain text) into sections of clean text.

`parse_document` is what callers use: it checks the size, sniffs the type, then runs the real parser
(`_parse_bytes`; PDFs are read by bot.documents.pdf) in a child Python process with a wall-time limit
and an address-space limit (RLIMIT_AS), so a hostile or pathological file can neither hang nor crash
the bot; the child is killed on timeout. It blocks, so async code calls it through `asyncio.to_thread`.

Every failure a person can cause is a `DocumentError(code, message)` whose message can be shown to
them as is. Nothing is returned half-done: a document either parses completely or raises.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import unicodedata
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bot.safe_text import replace_lone_surrogates, shorten_name

log = logging.getLogger(__name__)

MAX_BYTES = 20 * 2**20
MAX_NAME_CHARS = 200  # a document's name as stored and shown; longer names keep their extension
# Zip-bomb limits, checked on the zip directory before anything is decompressed. A real .docx is
# XML that compresses 5-30x; a bomb is one huge member that compresses 1000x.
ZIP_MAX_TOTAL = 256 * 2**20  # declared uncompressed bytes, all members together
ZIP_MAX_RATIO = 100  # uncompressed / compressed, for members above ZIP_RATIO_MIN_SIZE
ZIP_RATIO_MIN_SIZE = 4 * 2**20
ZIP_MAX_MEMBERS = 10_000

KINDS = ("pdf", "docx", "html", "markdown", "text")
SUPPORTED = "PDF, Word (.docx), HTML, Markdown or plain-text (.txt)"
CODES = (
    "too_large", "empty", "encrypted", "scanned", "corrupt", "zip_bomb", "binary", "unsupported",
    "timeout", "memory",
)  # fmt: skip

TEXT_EXTS = {
    "", ".txt", ".text", ".md", ".markdown", ".mdown", ".mkd", ".html", ".htm", ".xhtml", ".csv", ".tsv",
    ".log", ".rst", ".json", ".xml", ".yaml", ".yml", ".tex", ".srt", ".org", ".adoc",
}  # fmt: skip
RTF_MIMES = {"application/rtf", "text/rtf", "application/x-rtf"}
HTML_EXTS = {".html", ".htm", ".xhtml"}
MARKDOWN_EXTS = {".md", ".markdown", ".mdown", ".mkd"}
UNSUPPORTED_EXTS = {
    ".exe", ".dll", ".so", ".bin", ".msi", ".apk", ".dmg", ".iso", ".png", ".jpg", ".jpeg", ".gif", ".bmp",
    ".webp", ".tif", ".tiff", ".heic", ".svg", ".mp3", ".mp4", ".wav", ".ogg", ".oga", ".m4a", ".mov",
    ".avi", ".mkv", ".webm", ".zip", ".gz", ".tgz", ".7z", ".rar", ".tar", ".xlsx", ".xls", ".pptx",
    ".ppt", ".doc", ".odt", ".ods", ".odp", ".rtf", ".epub", ".pages", ".numbers", ".key",
}  # fmt: skip
# Leading bytes of common binary formats -> what to call them in a message.
MAGIC = (
    (b"MZ", "a Windows program (.exe)"),
    (b"\x7fELF", "a program (ELF binary)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Office file (.doc/.xls/.ppt)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg audio/video file"),
    (b"\xca\xfe\xba\xbe", "a Java class / Mach-O program"),
)


class DocumentError(Exception):
    """A problem with the file itself; `message` is written for the person who sent it."""

    def __init__(self, code: str, message: str):
        assert code in CODES, code
        super().__init__(code, message)  # both in args, so the error survives pickling
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Section:
    text: str
    page: int | None = None  # 1-based, PDFs only
    heading: str | None = None  # nearest heading above this text


@dataclass(frozen=True)
class ParsedDocument:
    name: str
    kind: str  # one of KINDS
    sections: list[Section] = field(default_factory=list)
    pages: int | None = None  # page count, PDFs only
    sha256: str = ""  # of the raw bytes

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ParsedDocument:
        return cls(
            name=d["name"], kind=d["kind"], sections=[Section(**s) for s in d["sections"]],
            pages=d["pages"], sha256=d["sha256"],
        )  # fmt: skip


# ----------------------------------------------------------------------------- public entry point


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
    name = _clean_name(filename)
    if isinstance(data, Path):
        size = data.stat().st_size  # before reading, so a huge file is never loaded
        if size > max_bytes:
            raise _too_large(name, size, max_bytes)
        data = data.read_bytes()
    data = bytes(data)
    if len(data) > max_bytes:
        raise _too_large(name, len(data), max_bytes)
    if not data.strip():
        raise _empty(name)
    detect_kind(data, name, mime)  # cheap byte sniffing: reject .exe and friends without a child
    return _run_child(data, name, mime, timeout_s, memory_mb)


def _too_large(name: str, size: int, max_bytes: int) -> DocumentError:
    return DocumentError(
        "too_large", f"{name} is {_size(size)}; the limit is {_size(max_bytes)}. Split it into smaller files."
    )  # fmt: skip


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB" if n >= 2**10 else f"{n} bytes"


def _clean_name(filename: str) -> str:
    name = Path(str(filename).replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable()).strip()
    return shorten_name(name, MAX_NAME_CHARS) or "document"


# ----------------------------------------------------------------------------- the child process


def _run_child(data: bytes, name: str, mime: str | None, timeout_s: float, memory_mb: int) -> ParsedDocument:
    args = json.dumps({"filename": name, "mime": mime, "memory_mb": memory_mb, "cpu_s": timeout_s})
    root = str(Path(__file__).resolve().parents[2])  # so the child finds `bot` even when not installed
    # A small environment: the child handles hostile input and has no use for the bot's secrets.
    env = {k: v for k, v in os.environ.items() if k in _CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    # `-c` rather than `-m bot.documents.parse`: bot.documents imports this module, and runpy warns then.
    cmd = [sys.executable, "-c", "from bot.documents.parse import _child_main; _child_main()", args]
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
    raise DocumentError("corrupt", f"{name} could not be read: the parser failed on it. Is the file damaged?")


_CHILD_ENV = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV", "DOCENT_PARSE_TEST_HOOK"}


def _timeout_error(name: str, timeout_s: float) -> DocumentError:
    return DocumentError(
        "timeout", f"Reading {name} took longer than {timeout_s:g} s, so it was stopped. "
        "The file may be damaged or unusually complex; try a simpler export of it."
    )  # fmt: skip


def _memory_error(name: str, memory_mb: int) -> DocumentError:
    return DocumentError(
        "memory", f"Reading {name} needed more than {memory_mb} MB of memory, so it was stopped. "
        "Try a smaller file or split it."
    )  # fmt: skip


def _child_main() -> None:
    """Entry point of the child: limits first, then parse stdin, answer one JSON object on stdout."""
    import resource

    args = json.loads(sys.argv[1])
    limit = args["memory_mb"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = int(args["cpu_s"]) + 2  # a backstop in case the parent is gone and cannot kill us
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    out, sys.stdout = sys.stdout, sys.stderr  # stray prints from libraries must not corrupt the answer
    data = sys.stdin.buffer.read()
    try:
        _test_hook(args)
        doc = _parse_bytes(data, args["filename"], args["mime"])
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
            "message": f"{args['filename']} is too deeply nested to read.",
        }
    out.write(json.dumps(answer))
    out.flush()


def _test_hook(args: dict) -> None:
    """Tests make the child misbehave on purpose; read only here, in the child."""
    hook = os.environ.get("DOCENT_PARSE_TEST_HOOK", "")
    if hook == "sleep":
        import time

        time.sleep(3600)
    elif hook == "alloc":
        bytearray(2 * args["memory_mb"] * 2**20)  # more than the address-space limit allows


# ----------------------------------------------------------------------------- type detection


def detect_kind(data: bytes, filename: str, mime: str | None = None) -> str:
    """The parser to use, from the content first and the extension/mime second.

    "docx" means "a zip that should be a Word file"; `_parse_docx` checks what is inside.
    """
    name = _clean_name(filename)
    ext = Path(name.lower()).suffix
    mime = (mime or "").lower().split(";")[0].strip()
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if ext in UNSUPPORTED_EXTS - {".doc"}:
            raise _unsupported(name, f"a {ext} file")
        return "docx"
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf") or ext == ".rtf" or mime in RTF_MIMES:
        raise DocumentError(
            "unsupported", f"{name} is an RTF document. RTF is not supported yet; save it as DOCX, PDF or "
            "text and send it again."
        )  # fmt: skip
    label = next((what for magic, what in MAGIC if data.startswith(magic)), None)
    if label is None and data[4:8] == b"ftyp":
        label = "a video or audio file (MP4/MOV)"
    if label is None and data[:4] == b"RIFF":
        label = "a media file (RIFF: WAV/AVI/WebP)"
    if label is not None:
        if ext in TEXT_EXTS - {""}:
            raise _binary(name)
        raise _unsupported(name, label)
    if ext == ".pdf" or mime == "application/pdf":
        raise DocumentError("corrupt", f"{name} is not a valid PDF (it has no PDF header). Is it damaged?")
    if ext == ".docx" or mime.endswith("wordprocessingml.document"):
        raise DocumentError("corrupt", f"{name} is not a valid Word document (it is not a .docx zip).")
    if ext in UNSUPPORTED_EXTS:
        raise _unsupported(name, f"a {ext} file")
    if _looks_like_html(data[:2048]) or ext in HTML_EXTS or mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if ext in MARKDOWN_EXTS or mime in ("text/markdown", "text/x-markdown"):
        return "markdown"
    return "text"


def _looks_like_html(head: bytes) -> bool:
    h = head.replace(b"\x00", b"").lstrip(b"\xef\xbb\xbf\xff\xfe \t\r\n").lower()
    return h.startswith((b"<!doctype html", b"<html")) or (h.startswith(b"<") and b"<html" in h)


def _unsupported(name: str, what: str) -> DocumentError:
    return DocumentError(
        "unsupported", f"{name} looks like {what}, which I can't read. Send a {SUPPORTED} file."
    )


def _binary(name: str) -> DocumentError:
    return DocumentError(
        "binary", f"{name} has a text extension but contains binary data, not text. "
        f"Send a {SUPPORTED} file."
    )  # fmt: skip


# ----------------------------------------------------------------------------- parsing, in process


def _parse_bytes(data: bytes, filename: str, mime: str | None = None) -> ParsedDocument:
    """Parse in this process, without limits. The child process calls this; callers should not."""
    name = _clean_name(filename)
    if not data.strip():
        raise _empty(name)
    kind = detect_kind(data, name, mime)
    from bot.documents.pdf import parse_pdf

    parser = {"pdf": parse_pdf, "docx": _parse_docx, "html": _parse_html, "markdown": _parse_markdown}
    if kind == "text":
        sections, pages = [Section(_clean(_decode(data, name)))], None
    else:
        sections, pages = parser[kind](data, name)
    sections = [_encodable(s) for s in sections if s.text.strip()]
    if not sections:
        raise _empty(name)
    return ParsedDocument(name, kind, sections, pages, hashlib.sha256(data).hexdigest())


def _empty(name: str) -> DocumentError:
    return DocumentError("empty", f"{name} contains no text.")


def _encodable(section: Section) -> Section:
    """The section with lone surrogates replaced: whatever a parser returns, the text leaving the parse can be
    tokenized, stored and sent."""
    heading = replace_lone_surrogates(section.heading) if section.heading else section.heading
    return Section(replace_lone_surrogates(section.text), section.page, heading)


# -- DOCX


def _parse_docx(data: bytes, name: str) -> tuple[list[Section], None]:
    corrupt = DocumentError(
        "corrupt", f"{name} is damaged or truncated; it could not be read as a Word file."
    )
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError):
        raise corrupt from None
    _check_zip_bomb(infos, name)
    names = {i.filename for i in infos}
    if "word/document.xml" not in names:
        if any(n.startswith("xl/") for n in names):
            raise _unsupported(name, "an Excel spreadsheet (.xlsx)")
        if any(n.startswith("ppt/") for n in names):
            raise _unsupported(name, "a PowerPoint presentation (.pptx)")
        if "mimetype" in names or Path(name).suffix.lower() != ".docx":
            raise _unsupported(name, "a zip archive")
        raise corrupt
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
        sections: list[Section] = []
        heading, parts = None, []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                parts.append(_table_text(block))
                continue
            text = block.text.strip()
            style = (block.style.name if block.style is not None else "") or ""
            if text and (style.startswith("Heading") or style == "Title"):
                sections.append(Section(_clean("\n\n".join(parts)), heading=heading))
                heading, parts = " ".join(text.split()), []
            elif text:
                parts.append(text)
        sections.append(Section(_clean("\n\n".join(parts)), heading=heading))
    except (MemoryError, RecursionError):
        raise
    except Exception:
        raise corrupt from None
    return sections, None


def _check_zip_bomb(infos: list[zipfile.ZipInfo], name: str) -> None:
    """Judge the zip by its directory alone: declared sizes, before a single byte is inflated."""
    total = sum(i.file_size for i in infos)
    ratios = [i.file_size / max(i.compress_size, 1) for i in infos if i.file_size >= ZIP_RATIO_MIN_SIZE]
    if len(infos) > ZIP_MAX_MEMBERS or total > ZIP_MAX_TOTAL or any(r > ZIP_MAX_RATIO for r in ratios):
        raise DocumentError(
            "zip_bomb", f"{name} would unpack to {total / 2**20:,.0f} MB from {len(infos)} parts, "
            "which is not a normal Word document (a 'zip bomb'), so it was not opened."
        )  # fmt: skip


def _table_text(table) -> str:
    rows = []
    for row in table.rows:
        seen, cells = set(), []
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is returned once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# -- HTML

_DROP_TAGS = [
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg", "iframe",
    "button", "select", "canvas", "object", "embed",
]  # fmt: skip
_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_BLOCK_TAGS = [
    "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "blockquote",
    "pre", "figure", "figcaption", "caption", "hr", "address", "details", "summary",
]  # fmt: skip
_BREAK, _HEAD = "\ue000", "\ue001"  # private-use marks: block break, heading slot


def _parse_html(data: bytes, name: str) -> tuple[list[Section], None]:
    from bs4 import BeautifulSoup, Comment

    soup = BeautifulSoup(data, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": ["navigation", "banner", "contentinfo", "search"]}):
        tag.decompose()
    for c in soup.find_all(string=lambda s: isinstance(s, Comment)):
        c.extract()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    # Headings become numbered slots and blocks become break marks, then one get_text() walks the
    # tree iteratively (deeply nested hostile HTML would overflow a recursive walk).
    headings: list[str] = []
    for h in root.find_all(_HEADINGS):
        headings.append(" ".join(h.get_text(" ").split()))
        h.replace_with(f"{_HEAD}{len(headings) - 1}{_HEAD}")
    for br in root.find_all("br"):
        br.replace_with(_BREAK)
    for tag in root.find_all(_BLOCK_TAGS):
        tag.insert_before(_BREAK)
        tag.insert_after(_BREAK)
    for cell in root.find_all(["td", "th"]):
        cell.insert_after(" | ")
    text = root.get_text().replace(_BREAK + _HEAD, _HEAD)
    text = re.sub(r"\s+", " ", text)  # HTML whitespace collapses...
    text = re.sub(rf" ?{_BREAK}[ {_BREAK}]*", "\n", text)  # ...except at block boundaries
    text = re.sub(r"( \|)+ *(\n|$)", r"\2", text)  # the separator after a row's last cell
    pieces = re.split(rf"{_HEAD}(\d+){_HEAD}", text)  # [text, idx, text, idx, text, ...]
    sections = [Section(_clean(pieces[0]), heading=title)]
    for idx, body in zip(pieces[1::2], pieces[2::2], strict=True):
        sections.append(Section(_clean(body), heading=headings[int(idx)] or None))
    return sections, None


# -- Markdown

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def _parse_markdown(data: bytes, name: str) -> tuple[list[Section], None]:
    lines = _decode(data, name).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[0].strip() == "---":  # YAML front matter
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            lines = lines[end + 1 :]
    sections: list[Section] = []
    heading, body = None, []
    in_fence = False

    def flush(new_heading: str | None) -> None:
        nonlocal heading, body
        sections.append(Section(_clean(_md_inline("\n".join(body))), heading=heading))
        heading, body = new_heading, []

    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            body.append(line)
            continue
        m = _ATX.match(line)
        if m:
            flush(_md_inline(m.group(2) or "").strip() or None)
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and _SETEXT.match(nxt) and not _SETEXT.match(line):
            flush(_md_inline(line).strip())  # "Title\n=====": a heading; its underline is skipped next
            continue
        if _SETEXT.match(line) and i > 0 and lines[i - 1].strip() and not _SETEXT.match(lines[i - 1]):
            continue
        body.append(line)
    flush(None)
    return sections, None


def _md_inline(text: str) -> str:
    """Strip Markdown syntax that hurts reading; keep the words."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images -> alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links -> link text
    text = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", text)  # reference links
    text = re.sub(r"^ {0,3}\[[^\]]+\]:\s+\S+.*$", "", text, flags=re.M)  # link definitions
    text = re.sub(r"<[^>\n]+>", "", text)  # inline HTML
    text = re.sub(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # bold
    text = re.sub(r"(?<![\w*])([*_])(?=\S)(.+?)(?<=\S)\1(?![\w*])", r"\2", text)  # italics
    text = re.sub(r"`([^`\n]+)`", r"\1", text)  # inline code
    text = re.sub(r"^ {0,3}>\s?", "", text, flags=re.M)  # block quotes
    text = re.sub(r"^ {0,3}([-*_])( ?\1){2,} *$", "", text, flags=re.M)  # horizontal rules
    return text


# -- plain text


def _decode(data: bytes, name: str) -> str:
    """Bytes -> str for UTF-8 (with or without BOM), UTF-16/32 with BOM, and legacy code pages."""
    from charset_normalizer import from_bytes

    for bom, enc in (
        (b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
        (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"),
    ):  # fmt: skip
        if data.startswith(bom):
            try:
                return _check_text(data.decode(enc), name)
            except UnicodeDecodeError:
                raise _binary_or_unsupported(name) from None
    try:
        return _check_text(data.decode("utf-8"), name)
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if b"\x00" in data:  # only UTF-16/32 text without a BOM may contain NUL bytes
        if best is None or not best.encoding.startswith(("utf_16", "utf_32")):
            raise _binary_or_unsupported(name)
        return _check_text(str(best), name)
    # charset-normalizer often prefers cp775/cp1250 for short Western text; cp1252 is far more
    # common, so it wins whenever it reads about as cleanly.
    western = from_bytes(data, cp_isolation=["cp1252"]).best()
    if western is not None and (best is None or western.chaos <= best.chaos + 0.05):
        best = western
    if best is None:
        raise _binary_or_unsupported(name)
    return _check_text(str(best), name)


def _check_text(text: str, name: str) -> str:
    bad = sum(1 for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v\x1b")
    if "\x00" in text or bad > max(2, len(text) // 100):
        raise _binary_or_unsupported(name)
    return text


def _binary_or_unsupported(name: str) -> DocumentError:
    ext = Path(name.lower()).suffix
    return _binary(name) if ext in TEXT_EXTS else _unsupported(name, f"a binary {ext} file")


# -- shared clean-up

_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})


def _clean(text: str) -> str:
    """Normalize newlines and spaces; drop control characters; keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_LIGATURES)
    text = unicodedata.normalize("NFC", text).replace("\u00ad", "").replace("\ufeff", "")
    text = "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else " " for c in text)
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
