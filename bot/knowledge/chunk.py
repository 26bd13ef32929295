"""Cut parsed documents into overlapping, sentence-aligned chunks that fit the sentence encoder's window.

A section is split into sentences (a regex splitter that knows "e.g.", "Fig. 2", "et al." and
decimals); sentences are packed greedily up to `max_tokens`; the next chunk starts with the trailing
whole sentences of the previous one worth at most `overlap_tokens`. A sentence longer than
`max_tokens` is cut at word boundaries (a single giant "word" at character boundaries). Chunks stay
inside one section (so inside one PDF page) except that tiny sections are merged into the next one.

Token counts come from the caller (`count_tokens`), so this module needs no model; `token_counter`
builds one from a Hugging Face `tokenizers.Tokenizer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.knowledge.parse import ParsedDocument, Section

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # 0-based position in the document
    text: str
    page: int | None  # page of the chunk's first sentence (PDFs)
    heading: str | None  # nearest heading above the chunk's first sentence
    token_count: int  # count_tokens(text), without the encoder's special tokens


def token_counter(tokenizer) -> CountTokens:
    """count_tokens for a `tokenizers.Tokenizer`: no special tokens, and never truncated or padded.

    all-MiniLM-L6-v2's tokenizer.json turns on truncation and padding at 128 tokens, which would make
    every long text count as 128; the counter works on a copy so the caller's tokenizer is untouched.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


# ----------------------------------------------------------------------------- sentences

# Words that end with a period but rarely end a sentence before a capital or a digit ("Dr. Smith",
# "Fig. 2", "et al. (2020)"). Lower case, without the period.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "gen", "rev", "hon", "capt", "lt", "col", "sgt",
    "fig", "figs", "no", "nos", "vol", "vols", "p", "pp", "eq", "eqs", "ref", "refs", "tab", "sec", "ch",
    "chap", "art", "para", "suppl", "ed", "eds", "al", "vs", "cf", "approx", "ca", "resp", "incl", "viz",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
}  # fmt: skip
_END = re.compile(r"(?:\.{3}|…|[.!?]+)[\"'”’)\]]*(?=\s)")  # end punctuation, closing quotes, then a space
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, u.s (the final period is in _END)
_LIST_ITEM = re.compile(r"^\s*(?:[-*•·▪◦–]|\d{1,3}[.)]|\(?[a-zA-Z][.)])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, whitespace-normalized. Paragraph breaks, list items and table rows
    always end a sentence; single line breaks (PDF line wraps) do not."""
    out: list[str] = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        for block in _line_blocks(paragraph):
            out.extend(_split_block(block))
    return out


def _line_blocks(paragraph: str) -> list[str]:
    blocks: list[list[str]] = []
    for line in paragraph.split("\n"):
        if not line.strip():
            continue
        structured = bool(_LIST_ITEM.match(line)) or " | " in line
        if not blocks or structured or " | " in blocks[-1][-1]:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return [" ".join(" ".join(b).split()) for b in blocks]


def _split_block(s: str) -> list[str]:
    out, start = [], 0
    for m in _END.finditer(s):
        nxt = m.end() + 1  # _END is followed by exactly one space: the block is normalized
        if nxt >= len(s) or not _is_boundary(s, m, s[nxt]):
            continue
        out.append(s[start : m.end()])
        start = nxt
    out.append(s[start:])
    return [x for x in out if x]


def _is_boundary(s: str, m: re.Match, following: str) -> bool:
    if following.islower() or following in ",;:%)]}":  # sentences do not start that way
        return False
    if not m.group().startswith("."):  # "!", "?", "..."
        return True
    word = s[: m.start()].rsplit(" ", 1)[-1].lstrip("([{\"'“‘")
    low = word.lower()
    if low in _ABBREVIATIONS or _DOTTED.fullmatch(low):
        return False
    if len(word) == 1 and word.isupper():  # an initial: "J. Smith"
        return False
    return True


def sentence_windows(text: str, size: int) -> list[str]:
    """Every run of `size` consecutive sentences of `text`, stride one; the whole text when it has fewer.

    A chunk's windows are embedded next to the chunk itself: a question usually matches one or two
    sentences, and MiniLM's embedding of a 250-token chunk dilutes them with the rest.
    """
    if size < 1:
        raise ValueError(f"window size must be >= 1 sentence, not {size}")
    sentences = split_sentences(text)
    if len(sentences) <= size:
        return [" ".join(sentences)] if sentences else []
    return [" ".join(sentences[i : i + size]) for i in range(len(sentences) - size + 1)]


# ----------------------------------------------------------------------------- chunks


@dataclass
class _Unit:  # a sentence, or a piece of an over-long one
    text: str
    tokens: int
    page: int | None
    heading: str | None
    new_paragraph: bool


def chunk_document(
    doc: ParsedDocument,
    count_tokens: CountTokens,
    max_tokens: int = 200,
    overlap_tokens: int = 40,
    *,
    min_section_tokens: int | None = None,
) -> list[Chunk]:
    """Chunks of a parsed document, in order. Sections smaller than `min_section_tokens`
    (default max_tokens // 10, at least 8) are merged into the next section."""
    return _chunk_sections(doc.sections, count_tokens, max_tokens, overlap_tokens, min_section_tokens)


def chunk_text(
    text: str,
    count_tokens: CountTokens,
    max_tokens: int = 200,
    overlap_tokens: int = 40,
    *,
    page: int | None = None,
    heading: str | None = None,
) -> list[Chunk]:
    """Chunks of one plain string, treated as a single section."""
    return _chunk_sections([Section(text, page, heading)], count_tokens, max_tokens, overlap_tokens, None)


def _chunk_sections(
    sections: Iterable[Section],
    count: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
    min_section_tokens: int | None,
) -> list[Chunk]:
    if max_tokens < 1 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"need max_tokens >= 1 and 0 <= overlap_tokens < max_tokens, got {max_tokens}, {overlap_tokens}"
        )
    min_tokens = max(8, max_tokens // 10) if min_section_tokens is None else min_section_tokens
    groups: list[list[_Unit]] = []
    pending: list[_Unit] = []  # tiny sections waiting to be merged into the next one
    for section in sections:
        units = pending + _units(section, count, max_tokens)
        if sum(u.tokens for u in units) < min_tokens:
            pending = units
            continue
        groups.append(units)
        pending = []
    if pending:  # a tiny last section joins the one before it
        if groups:
            pending[0].new_paragraph = True
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    chunks: list[Chunk] = []
    for units in groups:
        for a, _b, text, n in _pack(units, count, max_tokens, overlap_tokens):
            chunks.append(Chunk(len(chunks), text, units[a].page, units[a].heading, n))
    return chunks


def _units(section: Section, count: CountTokens, max_tokens: int) -> list[_Unit]:
    units = []
    for paragraph in re.split(r"\n[ \t]*\n", section.text):
        first = True
        for sentence in split_sentences(paragraph):
            for piece in _fit(sentence, count, max_tokens):
                units.append(_Unit(piece, count(piece), section.page, section.heading, first))
                first = False
    return units


def _fit(sentence: str, count: CountTokens, max_tokens: int) -> list[str]:
    """The sentence itself when it fits, else pieces cut at word boundaries that each fit."""
    if count(sentence) <= max_tokens:
        return [sentence]
    pieces: list[str] = []
    cur: list[str] = []
    cur_tokens = 0
    for word in sentence.split(" "):
        n = count(word)
        if cur and cur_tokens + n > max_tokens:
            pieces.append(" ".join(cur))
            cur, cur_tokens = [], 0
        if n > max_tokens:  # one "word" (a URL, base64...) longer than the window
            pieces.extend(cut_chars(word, count, max_tokens))
            continue
        cur.append(word)
        cur_tokens += n
    if cur:
        pieces.append(" ".join(cur))
    # Counting words one by one is exact for WordPiece; for other tokenizers re-check and halve.
    out: list[str] = []
    for p in pieces:
        out.extend([p] if count(p) <= max_tokens or " " not in p else _halve(p, count, max_tokens))
    return out


def _halve(text: str, count: CountTokens, max_tokens: int) -> list[str]:
    words = text.split(" ")
    mid = len(words) // 2
    return _fit(" ".join(words[:mid]), count, max_tokens) + _fit(" ".join(words[mid:]), count, max_tokens)


def cut_chars(word: str, count: CountTokens, max_tokens: int) -> list[str]:
    """A "word" over the budget (a URL, base64) in the longest prefixes that fit, found by bisection among the
    first 32 characters per token (no real token is longer), so that a huge word costs linear time."""
    pieces = []
    while word:
        lo, hi = 1, min(len(word), 32 * max_tokens)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(word[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        pieces.append(word[:lo])
        word = word[lo:]
    return pieces


def _join(units: list[_Unit]) -> str:
    parts = [units[0].text]
    for u in units[1:]:
        parts.append(("\n" if u.new_paragraph else " ") + u.text)
    return "".join(parts)


def _pack(
    units: list[_Unit], count: CountTokens, max_tokens: int, overlap_tokens: int
) -> list[tuple[int, int, str, int]]:
    """Greedy packing of units[a:b] spans -> (a, b, text, token_count); consecutive spans overlap."""
    tok = [u.tokens for u in units]
    spans = []
    a = b = 0
    while b < len(units):
        while a < b and sum(tok[a:b]) + tok[b] > max_tokens:  # carried sentences must leave room
            a += 1
        first_new, total = b, sum(tok[a:b])
        while b < len(units) and (b == first_new or total + tok[b] <= max_tokens):
            total += tok[b]
            b += 1
        text = _join(units[a:b])
        n = count(text)
        while n > max_tokens and b - a > 1:  # joining added tokens (not WordPiece): shed sentences
            if b - 1 > first_new:
                b -= 1
            else:
                a += 1
            text = _join(units[a:b])
            n = count(text)
        spans.append((a, b, text, n))
        if b >= len(units):
            break
        c = b  # the next chunk repeats the trailing whole sentences worth <= overlap_tokens
        while c - 1 > a and sum(tok[c - 1 : b]) <= overlap_tokens:
            c -= 1
        a = c
    return spans
