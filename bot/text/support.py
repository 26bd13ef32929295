"""The support check for text the model wrote: what it claims must be in the source it cites.

A written answer or summary sentence can say something its source does not. The claims a reader trusts most,
and a small model gets wrong most, are its names, numbers and quoted terms: "2" where the source says
"version 0.21", "William" where it says "Rollo". So:

- `claim_terms(text)`: the names (capitalised words; a sentence's first word only when it is no common word),
  identifiers with digits ("COVID-19", "H1N1"), numbers (digits, versions, dates, decades, ordinals, spelled
  numbers such as "thirty" or "seven million") and quoted terms of a text.
- `unsupported_terms(text, source)`: those the source does not have. Numbers are compared by value ("30" is
  "thirty" is "30.0"; "1,000" is "1000"); names tolerate case, accents, plurals, possessives and a shared stem
  ("Europe" and "European"); a quoted term must occur verbatim, whitespace and case aside.
- `rests_on(answer, sentences)`: which source sentence an answer rests on (the most shared content words), for
  the quote shown under it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from lm.rank import light_stem

STEM_PREFIX = 5  # letters two words must share, one beginning the other, to count as one name (Europe ~ European)

_TOKEN = re.compile(r"[^\W_]+(?:[-./,:'’][^\W_]+)*%?")
_QUOTED = re.compile(r"[\"“”«»`]([^\"“”«»`\n]{1,80})[\"“”«»`]")
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")

_UNITS = {w: i for i, w in enumerate("""zero one two three four five six seven eight nine ten eleven twelve thirteen
fourteen fifteen sixteen seventeen eighteen nineteen""".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12}
_ORDINALS = {w: i + 3 for i, w in enumerate("""third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth
thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth""".split())}
# "one" is a pronoun as often as a number ("no one", "one of them"); "first" and "second" as often not a count
_NOT_NUMBERS = frozenset({"one", "zero"})

# words that begin sentences without naming anything: a capital there says nothing
_COMMON = frozenset("""a an the and or but nor so yet if then than when where while why how what which who whom whose
that this these those there here it its they them their he she his her him we our us you your i my me
is are was were be been being do does did done has have had having can could should would will shall may might must
not no yes none all any some each every both either neither many much more most few several such other another
in on at by for from to of with without into onto about above below after before during since until upon over under
as also only just even still however therefore thus because although though whereas unless once
first second next last finally then now today always never often sometimes usually
please note see use make take give get keep let try avoid wear wash stay call ask check contact follow read
according based given""".split())


def _plain(word: str) -> str:
    """Lower case, no accents (Hervé = Herve)."""
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).lower()


def _stem(word: str) -> str:
    """A word as names are compared: plain, no possessive, lightly stemmed ("Normans'" -> "norman")."""
    return light_stem(re.sub(r"['’]s?$", "", _plain(word)))


def _compact(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", _plain(text))


def _number_value(token: str) -> float | None:
    """The value of a numeric token: "1,000" 1000, "30.0" 30, "11th" 11, "1100s" 1100, "30%" 30; None if none."""
    t = token.rstrip("%")
    t = re.sub(r"(?<=\d)(?:st|nd|rd|th|s|'s|’s)$", "", t.lower())
    if not _NUMBER.fullmatch(t):
        return None
    return float(t.replace(",", ""))


def _is_version(token: str) -> bool:
    return bool(re.fullmatch(r"v?\d+(?:\.\d+){2,}", token.lower()))


def _spelled_numbers(tokens: list[str]) -> list[tuple[int, int, float]]:
    """(first token, last token, value) of each spelled number: "thirty" 30, "twenty-one" 21, "seven million"
    7e6, "3 million" 3e6, "tenth" 10."""
    found = []
    i = 0
    while i < len(tokens):
        start, value, seen = i, 0.0, False
        while i < len(tokens):
            w = tokens[i].lower()
            parts = w.split("-")
            if len(parts) == 2 and parts[0] in _TENS and parts[1] in _UNITS:
                value, seen = value + _TENS[parts[0]] + _UNITS[parts[1]], True
            elif w in _UNITS and w not in _NOT_NUMBERS:
                value, seen = value + _UNITS[w], True
            elif w in _TENS:
                value, seen = value + _TENS[w], True
            elif w in _ORDINALS and not seen:
                value, seen = float(_ORDINALS[w]), True  # a float, as every other value
                i += 1
                break
            elif w in _SCALES and (seen or (i > start)):
                value, seen = max(value, 1) * _SCALES[w], True
            elif w in _SCALES and i == start and i > 0 and _number_value(tokens[i - 1]) is not None:
                # "3 million": the digits before it were counted alone; count them with their scale
                found.append((i - 1, i, _number_value(tokens[i - 1]) * _SCALES[w]))
                i += 1
                break
            elif (w == "and" and seen and i + 1 < len(tokens)
                  and tokens[i + 1].lower().split("-")[0] in {**_UNITS, **_TENS}):
                pass  # "one hundred and twenty"
            else:
                break
            i += 1
        if seen:
            found.append((start, i - 1, value))
        elif i == start:
            i += 1
    return found


class _Claims:
    """A text's tokens sorted into the kinds of claim terms, with their surface forms."""

    def __init__(self, text: str):
        self.names: list[str] = []  # surface forms
        self.identifiers: list[str] = []
        self.numbers: list[tuple[str, float | str]] = []  # (surface, value or version string)
        self.quoted: list[str] = [m.group(1).strip() for m in _QUOTED.finditer(text) if m.group(1).strip()]
        tokens = [t.strip(".,:") for t in _TOKEN.findall(text)]
        in_spelled = set()
        for first, last, value in _spelled_numbers(tokens):
            self.numbers.append((" ".join(tokens[first:last + 1]), value))
            in_spelled.update(range(first, last + 1))
        for i, tok in enumerate(tokens):
            if i in in_spelled or not tok:
                continue
            has_digit = any(c.isdigit() for c in tok)
            has_alpha = any(c.isalpha() for c in tok)
            if has_digit and _is_version(tok):
                self.numbers.append((tok, tok.lower().lstrip("v")))
            elif has_digit and _number_value(tok) is not None:
                self.numbers.append((tok, _number_value(tok)))
            elif has_digit and not has_alpha:  # a date or a range: "2020-03-01", "1066-1100", "9:30"
                self.numbers += [(p, float(p)) for p in re.findall(r"\d+(?:\.\d+)?", tok)]
            elif has_digit:
                self.identifiers.append(tok)  # "COVID-19", "H1N1", "v2"
            elif tok[:1].isupper() and _plain(tok) not in _COMMON:
                self.names.append(tok)  # a sentence's first word too: it is compared case-blind, so "Patients" passes


def claim_terms(text: str) -> list[str]:
    """The names, identifiers, numbers and quoted terms of a text, in their own spelling, each once."""
    c = _Claims(text)
    out: list[str] = []
    for term in c.quoted + c.names + c.identifiers + [s for s, _ in c.numbers]:
        if term not in out:
            out.append(term)
    return out


def _same_value(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def unsupported_terms(text: str, source: str | Sequence[str]) -> list[str]:
    """The claim terms of `text` that `source` (a text or several) does not have (see the module docstring)."""
    source = source if isinstance(source, str) else "\n".join(source)
    claims, have = _Claims(text), _Claims(source)
    source_words = {_stem(t) for t in _TOKEN.findall(source)} | {_stem(w) for w in re.findall(r"[^\W\d_]+", source)}
    source_compact = _compact(source)
    source_values = [v for _, v in have.numbers]
    missing: list[str] = []

    def named(word: str) -> bool:
        s = _stem(word)
        if s in source_words:
            return True
        return len(s) >= STEM_PREFIX and any(len(h) >= STEM_PREFIX and (h.startswith(s) or s.startswith(h))
                                             for h in source_words)

    def has_value(value: float | str) -> bool:
        if isinstance(value, str):
            return value in {v for v in source_values if isinstance(v, str)}
        return any(isinstance(v, float) and _same_value(v, value) for v in source_values)

    plain_source = " ".join(_plain(source).split())
    for q in claims.quoted:
        if " ".join(_plain(q).split()) not in plain_source:
            missing.append(q)
    for name in claims.names:
        parts = [p for p in re.split(r"[-'’./]", name) if p]
        if not all(named(p) for p in parts) and not named(name):
            missing.append(name)
    for ident in claims.identifiers:
        if _compact(ident) not in source_compact:
            missing.append(ident)
    for surface, value in claims.numbers:
        if not has_value(value):
            missing.append(surface)
    return list(dict.fromkeys(missing))


_CONTENT_STOP = _COMMON | frozenset("answer passage document question evidence".split())


def content_words(text: str) -> set[str]:
    """A text's words that carry content, as names are compared (stemmed, accents and case aside)."""
    return {_stem(w) for w in re.findall(r"[^\W_]+", text) if _plain(w) not in _CONTENT_STOP and len(w) > 1}


def rests_on(answer: str, sentences: Sequence[str]) -> int | None:
    """The index of the sentence the answer rests on: the one sharing most of its content words (its claim
    terms count twice); the earlier one on a tie (callers give them best first); None when none shares any."""
    said = content_words(answer)
    terms = {_stem(t) for t in claim_terms(answer)}
    best, best_score = None, 0.0
    for i, sentence in enumerate(sentences):
        have = content_words(sentence)
        score = len(said & have) + len(terms & have)
        if score > best_score:
            best, best_score = i, score
    return best
