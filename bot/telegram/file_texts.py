"""What the bot says about a file it will not index: the messages of bot.documents.parse.DocumentError, shown
in reply to an upload (and printed by `docent ingest`). The rest of what the bot says is in
bot/telegram/texts.py and bot/telegram/training_texts.py.

It imports nothing: the parser's sandboxed child (bot.documents.parse.sandbox) words its errors with it, and
must not load the bot's services to do so."""

from __future__ import annotations

SUPPORTED = "PDF, Word (.docx), HTML, Markdown or plain-text (.txt)"  # the kinds of file the bot reads


def too_large(name: str, size: str, limit: str) -> str:
    return f"{name} is {size}; the limit is {limit}. Split it into smaller files."


def empty(name: str) -> str:
    return f"{name} contains no text."


def unsupported(name: str, what: str) -> str:
    """`what`: the kind of file it looks like ("a PNG image")."""
    return f"{name} looks like {what}, which I can't read. Send a {SUPPORTED} file."


def binary(name: str) -> str:
    return f"{name} has a text extension but contains binary data, not text. Send a {SUPPORTED} file."


def rtf(name: str) -> str:
    return f"{name} is an RTF document. RTF is not supported yet; save it as DOCX, PDF or text and send it again."


def not_a_pdf(name: str) -> str:
    return f"{name} is not a valid PDF (it has no PDF header). Is it damaged?"


def not_a_docx(name: str) -> str:
    return f"{name} is not a valid Word document (it is not a .docx zip)."


def damaged_docx(name: str) -> str:
    return f"{name} is damaged or truncated; it could not be read as a Word file."


def zip_bomb(name: str, unpacked_mb: float, parts: int) -> str:
    return (f"{name} would unpack to {unpacked_mb:,.0f} MB from {parts} parts, which is not a normal Word document "
            "(a 'zip bomb'), so it was not opened.")


def damaged_pdf(name: str) -> str:
    return f"{name} is damaged or truncated; it could not be read as a PDF."


def password_protected(name: str) -> str:
    return f"{name} is password-protected. Remove the password (for example print it to a new PDF) and send it again."


def password_not_removed(name: str) -> str:
    """pypdf found the PDF encrypted only while reading its pages."""
    return f"{name} is password-protected; remove the password first."


def scanned_pdf(name: str) -> str:
    return (f"{name} looks like a scanned PDF; it has no text layer, try OCR first (for example `ocrmypdf`), then "
            "send the result.")


def pdf_bomb(name: str) -> str:
    return (f"{name} is too large once unpacked: its content is compressed far beyond the limit for a PDF, so it "
            "was not read. Export or print it to a new PDF and send that.")


def parser_failed(name: str) -> str:
    return f"{name} could not be read: the parser failed on it. Is the file damaged?"


def too_deep(name: str) -> str:
    return f"{name} is too deeply nested to read."


def took_too_long(name: str, timeout_s: float) -> str:
    return (f"Reading {name} took longer than {timeout_s:g} s, so it was stopped. The file may be damaged or "
            "unusually complex; try a simpler export of it.")


def needed_too_much_memory(name: str, memory_mb: int) -> str:
    return (f"Reading {name} needed more than {memory_mb} MB of memory, so it was stopped. Try a smaller file or "
            "split it.")
