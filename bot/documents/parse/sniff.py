"""The kind of an uploaded file, told from its bytes first and its name and mime type second.

Cheap enough to run in the bot's own process before any child is started, so a program, an image or an
archive is refused at once, with a message that names what it looks like and what can be sent instead.
"""

from __future__ import annotations

from pathlib import Path

from bot.documents.parse.document import DocumentError, clean_name
from bot.telegram import file_texts

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


def detect_kind(data: bytes, filename: str, mime: str | None = None) -> str:
    """The parser to use, from the content first and the extension/mime second.

    "docx" means "a zip that should be a Word file"; the DOCX parser (formats.py) checks what is inside.
    """
    name = clean_name(filename)
    ext = Path(name.lower()).suffix
    mime = (mime or "").lower().split(";")[0].strip()
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if ext in UNSUPPORTED_EXTS - {".doc"}:
            raise unsupported_error(name, f"a {ext} file")
        return "docx"
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf") or ext == ".rtf" or mime in RTF_MIMES:
        raise DocumentError("unsupported", file_texts.rtf(name))
    label = next((what for magic, what in MAGIC if data.startswith(magic)), None)
    if label is None and data[4:8] == b"ftyp":
        label = "a video or audio file (MP4/MOV)"
    if label is None and data[:4] == b"RIFF":
        label = "a media file (RIFF: WAV/AVI/WebP)"
    if label is not None:
        if ext in TEXT_EXTS - {""}:
            raise binary_error(name)
        raise unsupported_error(name, label)
    if ext == ".pdf" or mime == "application/pdf":
        raise DocumentError("corrupt", file_texts.not_a_pdf(name))
    if ext == ".docx" or mime.endswith("wordprocessingml.document"):
        raise DocumentError("corrupt", file_texts.not_a_docx(name))
    if ext in UNSUPPORTED_EXTS:
        raise unsupported_error(name, f"a {ext} file")
    if _looks_like_html(data[:2048]) or ext in HTML_EXTS or mime in ("text/html", "application/xhtml+xml"):
        return "html"
    if ext in MARKDOWN_EXTS or mime in ("text/markdown", "text/x-markdown"):
        return "markdown"
    return "text"


def _looks_like_html(head: bytes) -> bool:
    h = head.replace(b"\x00", b"").lstrip(b"\xef\xbb\xbf\xff\xfe \t\r\n").lower()
    return h.startswith((b"<!doctype html", b"<html")) or (h.startswith(b"<") and b"<html" in h)


def unsupported_error(name: str, what: str) -> DocumentError:
    return DocumentError("unsupported", file_texts.unsupported(name, what))


def binary_error(name: str) -> DocumentError:
    return DocumentError("binary", file_texts.binary(name))
