"""The parsers, one per kind of file (DOCX, HTML, Markdown, plain text; PDF is pdf.py), and `parse_bytes`,
which picks one from the sniffed kind. They run in the limited child process (sandbox.py), never in the bot's
own: each returns the document's sections, or raises DocumentError with a message for the person.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import zipfile
from pathlib import Path

from bot.documents.parse.document import (
    DocumentError,
    ParsedDocument,
    Section,
    clean_name,
    clean_text,
    empty_error,
)
from bot.documents.parse.hidden import (
    drop_hidden_elements,
    drop_hidden_markup,
    drop_invisible,
    drop_never_shown,
    visible_paragraph_text,
)
from bot.documents.parse.pdf import parse_pdf
from bot.documents.parse.sniff import TEXT_EXTS, binary_error, detect_kind, unsupported_error
from bot.safe_text import replace_lone_surrogates
from bot.telegram import file_texts

# Zip-bomb limits, checked on the zip directory before anything is decompressed. A real .docx is
# XML that compresses 5-30x; a bomb is one huge member that compresses 1000x.
ZIP_MAX_TOTAL = 256 * 2**20  # declared uncompressed bytes, all members together
ZIP_MAX_RATIO = 100  # uncompressed / compressed, for members above ZIP_RATIO_MIN_SIZE
ZIP_RATIO_MIN_SIZE = 4 * 2**20
ZIP_MAX_MEMBERS = 10_000


def parse_bytes(data: bytes, filename: str, mime: str | None = None) -> ParsedDocument:
    """Parse in this process, without limits. The child process calls this; callers should not."""
    name = clean_name(filename)
    if not data.strip():
        raise empty_error(name)
    kind = detect_kind(data, name, mime)
    parser = {"pdf": parse_pdf, "docx": _parse_docx, "html": _parse_html, "markdown": _parse_markdown}
    if kind == "text":
        sections, pages = [Section(clean_text(_decode(data, name)))], None
    else:
        sections, pages = parser[kind](data, name)
    sections = [_encodable(s) for s in sections if s.text.strip()]
    if not sections:
        raise empty_error(name)
    return ParsedDocument(name, kind, sections, pages, hashlib.sha256(data).hexdigest())


def _encodable(section: Section) -> Section:
    """The section with lone surrogates replaced and invisible characters dropped (hidden.drop_invisible):
    whatever a parser returns, the text leaving the parse can be tokenized, stored and sent, and holds nothing a
    reader could not see."""
    heading = drop_invisible(replace_lone_surrogates(section.heading)) if section.heading else section.heading
    return Section(drop_invisible(replace_lone_surrogates(section.text)), section.page, heading)


# -- DOCX


def _parse_docx(data: bytes, name: str) -> tuple[list[Section], None]:
    corrupt = DocumentError("corrupt", file_texts.damaged_docx(name))
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError):
        raise corrupt from None
    _check_zip_bomb(infos, name)
    names = {i.filename for i in infos}
    if "word/document.xml" not in names:
        if any(n.startswith("xl/") for n in names):
            raise unsupported_error(name, "an Excel spreadsheet (.xlsx)")
        if any(n.startswith("ppt/") for n in names):
            raise unsupported_error(name, "a PowerPoint presentation (.pptx)")
        if "mimetype" in names or Path(name).suffix.lower() != ".docx":
            raise unsupported_error(name, "a zip archive")
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
            text = visible_paragraph_text(block).strip()  # Word's hidden text is not indexed
            style = (block.style.name if block.style is not None else "") or ""
            if text and (style.startswith("Heading") or style == "Title"):
                sections.append(Section(clean_text("\n\n".join(parts)), heading=heading))
                heading, parts = " ".join(text.split()), []
            elif text:
                parts.append(text)
        sections.append(Section(clean_text("\n\n".join(parts)), heading=heading))
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
        raise DocumentError("zip_bomb", file_texts.zip_bomb(name, total / 2**20, len(infos)))


def _table_text(table) -> str:
    rows = []
    for row in table.rows:
        seen, cells = set(), []
        for cell in row.cells:
            if id(cell._tc) in seen:  # a merged cell is returned once per grid column it spans
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join("\n".join(visible_paragraph_text(p) for p in cell.paragraphs).split()))
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
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    drop_hidden_elements(soup)  # what a browser would not show is not indexed (before <style> goes)
    drop_never_shown(soup)
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": ["navigation", "banner", "contentinfo", "search"]}):
        tag.decompose()
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
    sections = [Section(clean_text(pieces[0]), heading=title)]
    for idx, body in zip(pieces[1::2], pieces[2::2], strict=True):
        sections.append(Section(clean_text(body), heading=headings[int(idx)] or None))
    return sections, None


# -- Markdown

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$|^ {0,3}(#{1,6})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def _parse_markdown(data: bytes, name: str) -> tuple[list[Section], None]:
    text = drop_hidden_markup(_decode(data, name).replace("\r\n", "\n").replace("\r", "\n"))
    lines = text.split("\n")
    if lines and lines[0].strip() == "---":  # YAML front matter
        end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
        if end is not None:
            lines = lines[end + 1 :]
    sections: list[Section] = []
    heading, body = None, []
    in_fence = False

    def flush(new_heading: str | None) -> None:
        nonlocal heading, body
        sections.append(Section(clean_text(_md_inline("\n".join(body))), heading=heading))
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
    return binary_error(name) if ext in TEXT_EXTS else unsupported_error(name, f"a binary {ext} file")
