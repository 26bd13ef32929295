"""What a parse produces and how it fails, shared by every module of the parse package: the sections of a
document, `DocumentError` with its codes, and the clean-up of names and text that every format applies.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bot.safe_text import shorten_name
from bot.telegram import file_texts

MAX_NAME_CHARS = 200  # a document's name as stored and shown; longer names keep their extension
KINDS = ("pdf", "docx", "html", "markdown", "text")
CODES = (
    "too_large", "empty", "encrypted", "scanned", "corrupt", "zip_bomb", "binary", "unsupported",
    "timeout", "memory",
)  # fmt: skip


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


def empty_error(name: str) -> DocumentError:
    return DocumentError("empty", file_texts.empty(name))


def clean_name(filename: str) -> str:
    name = Path(str(filename).replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable()).strip()
    return shorten_name(name, MAX_NAME_CHARS) or "document"


_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})


# a line that is only a heading's underline or a rule ("=====", "-----", "* * *", "______"): read into a sentence
# it becomes part of an answer or a summary, so it goes (its line break stays, and the heading keeps its own line)
_UNDERLINES = re.compile(r"^(?:[=\-_*~#+][ ]?){3,160}$", re.M)  # a long run is content, not a rule
# a list item whose bullet is written twice ("• • item", from a converter that adds its own): one bullet
_REPEATED_BULLETS = re.compile(r"^([•◦▪‣⁃●○■])(?:[ ]?[•◦▪‣⁃●○■-])+ ", re.M)


def clean_text(text: str) -> str:
    """Normalize newlines and spaces; drop control characters, underline and rule lines and doubled bullets;
    keep paragraph breaks."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_LIGATURES)
    text = unicodedata.normalize("NFC", text).replace("\u00ad", "").replace("\ufeff", "")
    text = "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else " " for c in text)
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = _UNDERLINES.sub("", text)
    text = _REPEATED_BULLETS.sub(r"\1 ", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()
