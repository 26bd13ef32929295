"""Cut parsed documents into overlapping, sentence-aligned chunks that fit the sentence encoder's window.

A section is split into sentences (a regex splitter that knows "e.g.", "Fig. 2", "et al." and
decimals); sentences are packed greedily up to `max_tokens` tokens and `max_chars` characters; the next
chunk starts with the trailing whole sentences of the previous one worth at most `overlap_tokens`. A
sentence over either bound is cut at word boundaries (a single giant "word" at character boundaries).
Chunks stay inside one section (so inside one PDF page) except that tiny sections are merged into the
next one. The cost is linear in the input: the token counter is never given more than `max_chars`
characters, so a megabyte without a space costs what a megabyte of prose does.

Token counts come from the caller (`count_tokens`), so this module needs no model; `token_counter`
builds one from a Hugging Face `tokenizers.Tokenizer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.documents.parse import ParsedDocument, Section

CountTokens = Callable[[str], int]
# A chunk's character bound, per token of its token bound. English averages 4-5 characters per WordPiece
# token; a word the encoder cannot split (over 100 characters) counts as one token however long it is, so
# without this bound 2 MB of "x" would be one chunk.
CHARS_PER_TOKEN = 8


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
    word = s[s.rfind(" ", 0, m.start()) + 1 : m.start()].lstrip("([{\"'“‘")  # no copy of all before it
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
    max_chars: int | None = None,
) -> list[Chunk]:
    """Chunks of a parsed document, in order, each at most `max_tokens` tokens and `max_chars` characters
    (default CHARS_PER_TOKEN per token). Sections smaller than `min_section_tokens` (default max_tokens // 10,
    at least 8) are merged into the next section."""
    return _chunk_sections(doc.sections, count_tokens, max_tokens, overlap_tokens, min_section_tokens, max_chars)


def chunk_text(
    text: str,
    count_tokens: CountTokens,
    max_tokens: int = 200,
    overlap_tokens: int = 40,
    *,
    page: int | None = None,
    heading: str | None = None,
    max_chars: int | None = None,
) -> list[Chunk]:
    """Chunks of one plain string, treated as a single section."""
    return _chunk_sections([Section(text, page, heading)], count_tokens, max_tokens, overlap_tokens, None, max_chars)


def _chunk_sections(
    sections: Iterable[Section],
    count: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
    min_section_tokens: int | None,
    max_chars: int | None,
) -> list[Chunk]:
    if max_tokens < 1 or not 0 <= overlap_tokens < max_tokens:
        raise ValueError(
            f"need max_tokens >= 1 and 0 <= overlap_tokens < max_tokens, got {max_tokens}, {overlap_tokens}"
        )
    max_chars = CHARS_PER_TOKEN * max_tokens if max_chars is None else max_chars
    if max_chars < 1:
        raise ValueError(f"need max_chars >= 1, got {max_chars}")
    min_tokens = max(8, max_tokens // 10) if min_section_tokens is None else min_section_tokens
    groups: list[list[_Unit]] = []
    pending: list[_Unit] = []  # tiny sections waiting to be merged into the next one
    pending_tokens = 0
    for section in sections:
        units = _units(section, count, max_tokens, max_chars)
        pending.extend(units)
        pending_tokens += sum(u.tokens for u in units)
        if pending_tokens < min_tokens:
            continue
        groups.append(pending)
        pending, pending_tokens = [], 0
    if pending:  # a tiny last section joins the one before it
        if groups:
            pending[0].new_paragraph = True
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    chunks: list[Chunk] = []
    for units in groups:
        for a, _b, text, n in _pack(units, count, max_tokens, max_chars, overlap_tokens):
            chunks.append(Chunk(len(chunks), text, units[a].page, units[a].heading, n))
    return chunks


def _units(section: Section, count: CountTokens, max_tokens: int, max_chars: int) -> list[_Unit]:
    units = []
    for paragraph in re.split(r"\n[ \t]*\n", section.text):
        first = True
        for sentence in split_sentences(paragraph):
            for piece, n in _fit(sentence, count, max_tokens, max_chars):
                units.append(_Unit(piece, n, section.page, section.heading, first))
                first = False
    return units


def _fit(sentence: str, count: CountTokens, max_tokens: int, max_chars: int) -> list[tuple[str, int]]:
    """(piece, tokens): the sentence itself when it fits both bounds, else pieces cut at word boundaries that
    each fit. `count` never sees more than max_chars characters: a longer word is cut without being counted
    whole, so a huge input costs time linear in its length."""
    if len(sentence) <= max_chars:
        n = count(sentence)
        if n <= max_tokens:
            return [(sentence, n)]
    pieces: list[tuple[str, int]] = []
    cur: list[str] = []
    cur_tokens = cur_chars = 0
    for word in sentence.split(" "):
        n = count(word) if len(word) <= max_chars else max_tokens + 1
        if cur and (cur_tokens + n > max_tokens or cur_chars + 1 + len(word) > max_chars):
            pieces.append((" ".join(cur), cur_tokens))
            cur, cur_tokens, cur_chars = [], 0, 0
        if n > max_tokens:  # one "word" (a URL, base64, minified JSON...) longer than the window
            pieces.extend(_cut_counted(word, count, max_tokens, max_chars))
            continue
        cur_chars += len(word) + (1 if cur else 0)
        cur.append(word)
        cur_tokens += n
    if cur:
        pieces.append((" ".join(cur), cur_tokens))
    # Counting words one by one is exact for WordPiece; for other tokenizers re-check pieces of several words
    # and halve those over the bound.
    out: list[tuple[str, int]] = []
    for p, n in pieces:
        if " " in p:
            n = count(p)
        out.extend([(p, n)] if n <= max_tokens or " " not in p else _halve(p, count, max_tokens, max_chars))
    return out


def _halve(text: str, count: CountTokens, max_tokens: int, max_chars: int) -> list[tuple[str, int]]:
    words = text.split(" ")
    mid = len(words) // 2
    return (_fit(" ".join(words[:mid]), count, max_tokens, max_chars)
            + _fit(" ".join(words[mid:]), count, max_tokens, max_chars))


def cut_chars(word: str, count: CountTokens, max_tokens: int, max_chars: int | None = None) -> list[str]:
    """A "word" over the budget (a URL, base64) in the longest prefixes of at most `max_tokens` tokens and
    `max_chars` characters (default 32 per token: no real token is longer).

    Each prefix is searched for from a guess: the first from the token density of the longest prefix, each
    next one from the length of the one before (a long run tends to go on as it started). So a huge word
    costs linear time: a few counts, of at most max_chars characters each, per piece."""
    return [piece for piece, _ in _cut_counted(word, count, max_tokens, max_chars or 32 * max_tokens)]


def _cut_counted(word: str, count: CountTokens, max_tokens: int, max_chars: int) -> list[tuple[str, int]]:
    """cut_chars's pieces with their token counts (each piece was counted while it was searched for)."""
    pieces: list[tuple[str, int]] = []
    start, guess = 0, 0
    while start < len(word):
        longest = min(len(word) - start, max_chars)
        counted: dict[int, int] = {}

        def fits(k: int, start: int = start, counted: dict[int, int] = counted) -> bool:
            counted[k] = count(word[start : start + k])
            return counted[k] <= max_tokens

        if not guess:
            n = count(word[start : start + longest])
            size = longest if n <= max_tokens else _longest_fit(fits, longest * max_tokens // n, longest)
            counted.setdefault(longest, n)
        else:
            size = _longest_fit(fits, guess, longest + 1)
        piece = word[start : start + size]
        pieces.append((piece, counted[size] if size in counted else count(piece)))
        start, guess = start + size, size
    return pieces


def _longest_fit(fits: Callable[[int], bool], guess: int, too_long: int) -> int:
    """The largest k < too_long with fits(k), by galloping from `guess` and then bisecting; 1 when not even
    one character fits (a piece must make progress)."""
    good, bad = 0, too_long  # invariant: fits(good) or good == 0; not fits(bad)
    guess, step = min(max(guess, 1), too_long - 1), 1
    if fits(guess):
        good = guess
        while good + step < bad and fits(good + step):
            good, step = good + step, step * 2
        bad = min(bad, good + step)
    else:
        bad = guess
        while bad - step > 0 and not fits(bad - step):
            bad, step = bad - step, step * 2
        good = max(0, bad - step)
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return max(good, 1)


def _join(units: list[_Unit]) -> str:
    parts = [units[0].text]
    for u in units[1:]:
        parts.append(("\n" if u.new_paragraph else " ") + u.text)
    return "".join(parts)


def _pack(
    units: list[_Unit], count: CountTokens, max_tokens: int, max_chars: int, overlap_tokens: int
) -> list[tuple[int, int, str, int]]:
    """Greedy packing of units[a:b] spans -> (a, b, text, token_count); consecutive spans overlap.

    Running sums give any span's tokens and characters (units are joined by one separator each) without
    joining it, so packing is linear however small the units are."""
    tok_sum, char_sum = [0], [0]
    for u in units:
        tok_sum.append(tok_sum[-1] + u.tokens)
        char_sum.append(char_sum[-1] + len(u.text) + 1)

    def tokens(a: int, b: int) -> int:
        return tok_sum[b] - tok_sum[a]

    def fits(a: int, b: int) -> bool:
        return tokens(a, b) <= max_tokens and char_sum[b] - char_sum[a] - 1 <= max_chars

    spans = []
    a = b = 0
    while b < len(units):
        while a < b and not fits(a, b + 1):  # carried sentences must leave room
            a += 1
        first_new = b
        b += 1  # the first new unit always goes in: _fit made each one fit alone
        while b < len(units) and fits(a, b + 1):
            b += 1
        text = _join(units[a:b])
        n = units[a].tokens if b - a == 1 else count(text)  # one unit's count is exact already
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
        while c - 1 > a and tokens(c - 1, b) <= overlap_tokens:
            c -= 1
        a = c
    return spans
