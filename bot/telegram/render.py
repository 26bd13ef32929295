"""Telegram rendering: the model's Markdown to Telegram HTML, and splitting at 4096 UTF-16 units (the messages
that carry it are bot.telegram.live_messages).

Telegram accepts a small HTML subset (b, i, s, a, code, pre, blockquote, ...) and rejects the whole message on
one stray `<` or unclosed tag, so the converter escapes everything it does not translate and only ever emits
tags in matched pairs. It emits no `a`: a Markdown link is shown as its text and its full address. Markdown that is cut mid-stream (an unclosed fence, a lone `**`) still renders: an open
fence closes at the end, an unmatched delimiter stays literal. Lengths are counted as Telegram counts them, in
UTF-16 code units, and measured on the rendered HTML (always at least as long as the visible text), so a part
that fits here fits there.
"""

from __future__ import annotations

import html
import logging
import re

from bot.safe_text import replace_lone_surrogates

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # characters per message, in UTF-16 code units, after entity parsing


def utf16_len(s: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it (an emoji outside the BMP counts 2)."""
    return len(s.encode("utf-16-le")) // 2


def truncate_utf16(s: str, limit: int) -> str:
    """`s` cut to at most `limit` UTF-16 units, with an ellipsis when something was cut; a lone surrogate
    (which no encoder can send) becomes U+FFFD."""
    s = replace_lone_surrogates(s)
    if utf16_len(s) <= limit:
        return s
    head = s.encode("utf-16-le")[: 2 * (limit - 1)].decode("utf-16-le", errors="ignore")  # no half pairs
    return head + "…"


def _esc(s: str) -> str:
    return html.escape(s, quote=False)


# ----------------------------------------------------------------------------------------------------------
# Markdown -> Telegram HTML

_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_RULE = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")
_NUMBERED = re.compile(r"^([ \t]*)(\d{1,9})[.)][ \t]+(.*)$")
_QUOTE = re.compile(r"^[ \t]{0,3}>[ \t]?(.*)$")

_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
_LINK = re.compile(r"\[([^\[\]\n]+)\]\(\s*<?([^()\s<>\x00]+?)>?(?:\s+\"[^\"\n]*\")?\s*\)")
_SAFE_URL = re.compile(r"(?:https?|tg)://\S+", re.IGNORECASE)
# Bare URLs are kept away from the emphasis parser: `_` inside https://x.org/a_b_c is not italics.
_BARE_URL = re.compile(r"(?:https?|tg)://[^\s<>\"*`\x00]*[^\s<>\"*_~`.,;:!?)\]\x00]", re.IGNORECASE)
_PLAIN_RUN = re.compile(r"[^*_~\x00]+")
_DELIMITERS = (("***", "<b><i>", "</i></b>"), ("**", "<b>", "</b>"), ("__", "<b>", "</b>"),
               ("~~", "<s>", "</s>"), ("*", "<i>", "</i>"), ("_", "<i>", "</i>"))


def _fence_open(line: str) -> tuple[str, str] | None:
    """(marker, language) when `line` opens a fenced code block."""
    m = _FENCE_OPEN.match(line)
    if m is None:
        return None
    return m.group(1), re.sub(r"[^\w+#.-]", "", m.group(2))


def _fence_closes(line: str, marker: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(marker) and stripped == marker[0] * len(stripped)


def _can_open(s: str, i: int, delim: str) -> bool:
    after = s[i + len(delim): i + len(delim) + 1]
    if not after or after.isspace():
        return False
    if len(delim) == 1 and after == delim:
        return False  # a double delimiter that found no partner: literal
    # intraword single delimiters are not emphasis: snake_case_name, 2*3*4
    return not ((delim[0] == "_" or delim == "*") and i > 0 and s[i - 1].isalnum())


def _find_close(s: str, start: int, delim: str) -> int:
    j = start
    while (j := s.find(delim, j)) >= 0:
        before, after = s[j - 1], s[j + len(delim): j + len(delim) + 1]
        ok = j > start and not before.isspace()
        if len(delim) == 1:
            ok = ok and before != delim and after != delim  # `*` inside `**` belongs to the bold
        if delim[0] == "_" or delim == "*":
            ok = ok and not after.isalnum()
        if ok:
            return j
        j += 1
    return -1


def _emphasis(s: str, stash: list[str]) -> str:
    """Bold/italic/strike over `s`; \\x00N\\x00 marks stand for already rendered HTML (code, links, URLs)."""
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        if m := _PLAIN_RUN.match(s, i):
            out.append(_esc(m.group()))
            i = m.end()
            continue
        if s[i] == "\x00":
            j = s.index("\x00", i + 1)
            out.append(stash[int(s[i + 1: j])])
            i = j + 1
            continue
        for delim, open_tags, close_tags in _DELIMITERS:
            if s.startswith(delim, i) and _can_open(s, i, delim):
                j = _find_close(s, i + len(delim), delim)
                if j > 0:
                    # a tag is emitted with its partner around a recursively rendered inside: balanced
                    out.append(open_tags + _emphasis(s[i + len(delim): j], stash) + close_tags)
                    i = j + len(delim)
                    break
        else:
            out.append(_esc(s[i]))
            i += 1
    return "".join(out)


def _inline(text: str) -> str:
    """One line of Markdown inline markup -> HTML."""
    stash: list[str] = []

    def keep(rendered: str) -> str:
        stash.append(rendered)
        return f"\x00{len(stash) - 1}\x00"

    def link(m: re.Match[str]) -> str:
        # never an anchor whose text hides where it goes: a document quoted in an answer or a summary (or a model
        # repeating one) could show "the refund portal" and send the reader elsewhere. The address is shown as
        # text beside its label, where Telegram makes it a link the reader can see.
        label, url = m.group(1), m.group(2)
        if not _SAFE_URL.fullmatch(url):  # javascript:, file:, relative paths: stay literal text
            return m.group()
        if label.strip() == url:
            return keep(_esc(url))
        return keep(f"{_emphasis(label, stash)} ({_esc(url)})")

    text = _CODE_SPAN.sub(lambda m: keep(f"<code>{_esc(m.group(2))}</code>"), text)
    text = _LINK.sub(link, text)
    text = _BARE_URL.sub(lambda m: keep(_esc(m.group())), text)
    return _emphasis(text, stash)


# bullet glyphs a document's list item (or a model) writes after the Markdown marker: "- • item" shows one bullet
_GLYPHS = re.compile(r"^(?:[•◦▪‣⁃●○■][ \t]*)+")
_UNDERLINE = re.compile(r"^[ \t]{0,3}=+[ \t]*$")  # a setext heading's underline ("=====")
_SETEXT = re.compile(r"^[ \t]{0,3}(?:=+|-+)[ \t]*$")  # "Title" over "=====" or "-----": a heading


def _line(line: str) -> str:
    if m := _HEADING.match(line):
        return f"<b>{_inline(m.group(1))}</b>" if m.group(1) else ""
    if _UNDERLINE.match(line):
        return ""  # an underline under nothing: the row of "=" says nothing
    if _RULE.match(line):
        return "——————"
    if m := _BULLET.match(line):
        return f"{m.group(1)}• {_inline(_GLYPHS.sub('', m.group(2)))}"
    if m := _NUMBERED.match(line):
        return f"{m.group(1)}{m.group(2)}. {_inline(m.group(3))}"
    if m := _GLYPHS.match(line.lstrip()):
        return "• " + _inline(line.lstrip()[m.end():])  # "• • item" (a glyph doubled) shows one
    return _inline(line)


def markdown_to_telegram_html(md: str) -> str:
    """The model's Markdown -> HTML that Telegram's parse_mode=HTML accepts. Never unbalanced."""
    lines = md.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if fence := _fence_open(lines[i]):
            marker, lang = fence
            body: list[str] = []
            i += 1
            while i < len(lines) and not _fence_closes(lines[i], marker):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence; an unclosed one (mid-stream) ends with the text
            code = _esc("\n".join(body))
            out.append(f'<pre><code class="language-{lang}">{code}</code></pre>' if lang
                       else f"<pre>{code}</pre>")
        elif _QUOTE.match(lines[i]):
            quoted: list[str] = []
            while i < len(lines) and (m := _QUOTE.match(lines[i])):
                quoted.append(_inline(m.group(1)))  # blockquotes cannot nest in Telegram: inner `>` is text
                i += 1
            out.append("<blockquote>" + "\n".join(quoted) + "</blockquote>")
        elif i + 1 < len(lines) and _SETEXT.match(lines[i + 1]) and lines[i].strip() \
                and not _BULLET.match(lines[i]) and not _SETEXT.match(lines[i]) \
                and not _GLYPHS.match(lines[i].lstrip()):
            out.append(f"<b>{_inline(lines[i].strip())}</b>")  # the underline goes: the title shows bold
            i += 2
        else:
            out.append(_line(lines[i]))
            i += 1
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------
# A reply still being written

_MARKER_ONLY = re.compile(r"[ \t]*(?:[-*+>#]+|\d{1,9}[.)]?|[•◦▪‣⁃●○■]|[=-]+)?[ \t]*")


def _content_start(line: str) -> int:
    """Where the inline text of `line` begins, after a heading's #, a bullet, a number or a quote's >."""
    for pattern, group in ((_HEADING, 1), (_BULLET, 2), (_NUMBERED, 3), (_QUOTE, 1)):
        if (m := pattern.match(line)) and m.group(group) is not None:
            return m.start(group)
    return 0


def _unfinished_at(s: str, start: int) -> int | None:
    """The index in `s` of the first inline construct that opens and does not close yet (emphasis, a code span,
    a link), scanning as _emphasis does; None when everything that opened has closed."""
    i = start
    while i < len(s):
        if s[i] == "`":
            run = len(s[i:]) - len(s[i:].lstrip("`"))
            close = s.find(s[i:i + run], i + run)
            if close < 0:
                return i
            i = close + run
            continue
        if s[i] == "[":
            if (m := _LINK.match(s, i)) is None:
                if "](" in s[i:] or "]" not in s[i:]:  # a link being written, or a bracket still open
                    return i
                i += 1
                continue
            i = m.end()
            continue
        if m := _BARE_URL.match(s, i):
            i = m.end()
            continue
        if s[i] in "*_~" and not s[i:].strip("*_~"):
            return i  # delimiters at the very end: what follows decides whether they open something
        for delim, _, _ in _DELIMITERS:
            if s.startswith(delim, i) and _can_open(s, i, delim):
                j = _find_close(s, i + len(delim), delim)
                if j < 0:
                    return i
                i = j + len(delim)
                break
        else:
            i += 1
    return None


def streaming_view(text: str) -> str:
    """What to show of a reply still being written, so that it renders as its finished text will: its last line,
    still growing, is cut before a construct it opened and has not closed ("* **Grilled Chi" shows "•" until the
    bold closes), and a line that has only its list or heading marker so far waits. Inside an open code block
    nothing is held back: the renderer closes the block at the end."""
    head, newline, last = text.rpartition("\n")
    if _open_fence_at(head + newline) is not None or _fence_open(last):
        return text
    if _MARKER_ONLY.fullmatch(last):
        return head
    if _SETEXT.match(last):  # the underline of the line above, being written
        return head
    cut = _unfinished_at(last, _content_start(last))
    if cut is None:
        return text
    shown = last[:cut].rstrip()
    return head if _MARKER_ONLY.fullmatch(shown) else head + newline + shown


# ----------------------------------------------------------------------------------------------------------
# Splitting long text


def _open_fence_at(text: str) -> tuple[str, str] | None:
    """The fence (marker, language) still open at the end of `text`, if any."""
    fence: tuple[str, str] | None = None
    for line in text.split("\n"):
        if fence is None:
            fence = _fence_open(line)
        elif _fence_closes(line, fence[0]):
            fence = None
    return fence


def _cut(text: str, k: int, kind: str) -> tuple[str, str]:
    """Cuts `text` at index k. kind "line": text[k] is the newline; "space": text[k] is a blank;
    "hard": anywhere. A cut inside a code block closes the fence in the head and reopens it (same language)
    in the rest."""
    if kind == "line":
        head, rest = text[:k], text[k + 1:].lstrip("\n")
    elif kind == "space":
        head, rest = text[:k].rstrip(), text[k:].lstrip(" \t")
    else:
        head, rest = text[:k], text[k:]
    fence = _open_fence_at(head)
    if fence is not None:
        marker, lang = fence
        head = head.rstrip("\n") + "\n" + marker
        first, _, after = rest.partition("\n")
        rest = after if _fence_closes(first, marker) else f"{marker}{lang}\n{rest}"
    return head.rstrip(), rest.lstrip("\n")


def _candidates(text: str) -> list[tuple[int, int, str]]:
    """(preference, index, kind) of every place `text` may be cut; lower preference is better:
    0 paragraph, 1 line, 2 sentence end, 3 space (all outside code), 4 line inside a code block."""
    found: list[tuple[int, int, str]] = []
    fence: tuple[str, str] | None = None
    pos = 0
    lines = text.split("\n")
    for n, line in enumerate(lines):
        end = pos + len(line)
        if fence is None and (opened := _fence_open(line)):
            fence = opened
        elif fence is not None:
            if _fence_closes(line, fence[0]):
                fence = None
        elif line.strip():
            found += [(2, pos + m.end(), "space") for m in re.finditer(r"[.!?…][)\"»']?(?= )", line)]
            found += [(3, pos + m.start(), "space") for m in re.finditer(r"[ \t]", line)]
        if n + 1 < len(lines):  # the newline at `end`
            if fence is not None:
                found.append((4, end, "line"))
            else:
                blank = not line.strip() or not lines[n + 1].strip()
                found.append((0 if blank else 1, end, "line"))
        pos = end + 1
    return found


def split_message(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Markdown -> parts whose rendered HTML is at most `limit` UTF-16 units each, cut at a paragraph, then
    a line, a sentence, a space; inside a code block only when it alone is too long (the fence is closed
    and reopened). Every part renders to valid HTML on its own. Blank text gives []. A lone surrogate (a
    document's broken character map, a model's half of an emoji) becomes U+FFFD: it cannot be sent."""

    def fits(part: str) -> bool:
        return utf16_len(markdown_to_telegram_html(part)) <= limit

    text = replace_lone_surrogates(text).replace("\r\n", "\n").replace("\r", "\n").strip()
    parts: list[str] = []
    while text:
        if fits(text):
            parts.append(text)
            break
        # The longest fitting prefix, by bisection (lo always fits); rendered HTML is never much shorter
        # than its source, so 2 * limit characters are more than a part can hold.
        lo, hi = 0, min(len(text), 2 * limit)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(_cut(text, mid, "hard")[0]):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise ValueError(f"limit={limit} is too small to hold any part of this text")
        head, rest = _cut(text, lo, "hard")
        for preference in range(5):
            ks = [(k, kind) for p, k, kind in _candidates(text[: lo + 1])
                  if p == preference and lo // 2 <= k <= lo]
            if ks:
                k, kind = max(ks)
                cand_head, cand_rest = _cut(text, k, kind)
                if cand_head and fits(cand_head):
                    head, rest = cand_head, cand_rest
                    break
        if len(rest) >= len(text):
            raise ValueError(f"limit={limit} is too small to split this text")  # a reopened fence ate the cut
        parts.append(head)
        text = rest.strip()
    return [p for p in parts if p.strip()]
