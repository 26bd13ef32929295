"""What a generated chat reply may not carry: a source or web address the model made up.

A chat reply is written from the conversation alone; no document is in its prompt. So a "Source: ..." line, a
"References:" list or a web address in it was invented ("What is the capital of Italy?" got "Source:
www.wikipedia.com/wiki/Italia_italiana"). Only a document answer (bot.services.answer) names sources, and
those are the chat's own documents. `strip_invented_sources` takes them out, while the reply streams too.
"""

from __future__ import annotations

import re

_SOURCE_LINE = re.compile(
    r"^[ \t>*_#-]*(?:\*\*|__)?\s*(?:sources?|references?|citations?|see\s+also|read\s+more|more\s+information|"
    r"learn\s+more|for\s+more\s+information)\s*(?:\*\*|__)?\s*:[^\n]*$", re.I | re.M)
_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>\"']+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|io|info|co\.uk)"
                  r"(?:/[^\s)\]>\"']*)?", re.I)
_EMPTY_BRACKETS = re.compile(r"\(\s*(?:see|at|via|from|on)?\s*\)|\[\s*\]|<\s*>", re.I)
_EMPTY_ITEM = re.compile(r"^[ \t]*(?:[-*•]|\d+[.)])?[ \t]*(?:\[\d+\])?[ \t]*:?[ \t]*$", re.M)
_SOURCE_WORDS = ("source", "sources", "reference", "references", "citation", "see also", "read more",
                 "more information", "learn more", "for more information")


def strip_invented_sources(text: str, partial: bool = False) -> str:
    """`text` without source lines and web addresses. `partial`: the reply is still streaming, so a last line that
    could still become a source line ("Sour") is held back too."""
    out = text
    if _SOURCE_LINE.search(out) or _URL.search(out):  # else the text stays exactly as the model wrote it
        out = _URL.sub("", _SOURCE_LINE.sub("", out))
        out = _EMPTY_ITEM.sub("", _EMPTY_BRACKETS.sub("", out))
        out = re.sub(r"[ \t]+([.,;:!?])", r"\1", out)
        out = re.sub(r"[ \t]{2,}", " ", out)
        out = re.sub(r"\n{3,}", "\n\n", out).rstrip()
        out = out if partial else out.strip()
    if partial:  # hold back a last line that may still become a source line ("Sour", "**Refer")
        head, _, last = out.rpartition("\n")
        start = re.sub(r"^[\s>*_#-]*", "", last).lower()
        if start and any(word.startswith(start) for word in _SOURCE_WORDS):
            out = head
    return out
