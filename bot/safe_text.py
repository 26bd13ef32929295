"""Untrusted text made safe to encode, store and show: lone surrogates replaced, long file names shortened.

A Python str may hold a lone UTF-16 surrogate (a PDF's character map can point at one, JSON can escape one);
nothing downstream can encode it: the tokenizers refuse it, UTF-8 for SQL and the Bot API raise on it. File
names come from users and can be thousands of characters long, longer than a Telegram message.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}$")  # ".txt", ".docx", ".tar" (".tar.gz" keeps ".gz")


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD; a high + low pair becomes the character it encodes."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def shorten_name(name: str, limit: int) -> str:
    """`name` cut to at most `limit` characters with an ellipsis in the middle, keeping its extension (so the
    shortened name still says what kind of file it is)."""
    if len(name) <= limit:
        return name
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    match = _EXTENSION.search(name)
    extension = match.group() if match and len(match.group()) < limit - 1 else ""
    return name[: limit - len(extension) - 1] + "…" + extension
