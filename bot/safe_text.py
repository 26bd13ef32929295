"""Untrusted text made safe to encode, store and show: lone surrogates and U+0000 replaced, long file names
shortened.

A Python str may hold a lone UTF-16 surrogate (a PDF's character map can point at one, JSON can escape one);
nothing downstream can encode it: the tokenizers refuse it, UTF-8 for SQL and the Bot API raise on it. JSON can
also escape U+0000, which SQLite stores but PostgreSQL refuses in any text column. `storable` is the one rule for
both, applied to every string of a Telegram update as it enters (bot.telegram.incoming): each such character
becomes U+FFFD, one UTF-16 unit for one, so Telegram's entity offsets still point where they did. File names
come from users and can be thousands of characters long, longer than a Telegram message.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}$")  # ".txt", ".docx", ".tar" (".tar.gz" keeps ".gz")


def replace_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD; a high + low pair becomes the character it encodes."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def storable(text: str) -> str:
    """`text` with U+0000 and each lone surrogate replaced by U+FFFD (a high + low pair becomes the character it
    encodes): what every database, tokenizer and the Bot API accept."""
    if not _UNSTORABLE.search(text):
        return text
    return replace_lone_surrogates(text).replace("\x00", "\ufffd")


def storable_data(value: Any) -> Any:
    """`value` (JSON data: dicts, lists, strings, numbers) with `storable` applied to every string in it."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_data(k): storable_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_data(v) for v in value]
    return value


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
