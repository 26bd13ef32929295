"""Question typing and naming: what a question asks for (a phrase or a statement; a time or a number), the
names and numbers it asks about, and whether a text names them, repeats the question or is made of the evidence's
words. Used by the answer pipeline, the copy path and the summary checks."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from lm.rank import light_stem

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
STOP_WORDS = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
which with what who how why when where does do did not no can could may might will would should i""".split())
_AUX = frozenset("is are was were be been does do did has have had can could should would will shall may might "
                 "must".split())
_WH_SHORT = frozenset("who whom whose when where which".split())
_PREPOSITIONS = frozenset("in on at from to for by during after before since until of with into about under "
                          "between among".split())
# What an answer to "when ..." or "how many ..." must contain, besides a digit: a span without any is a name or
# a phrase the model liked, not a date or a quantity ("the Normans" for "When were the Normans in Normandy?").
_TIME_WORDS = frozenset("""january february march april may june july august september october november december
spring summer autumn winter century centuries decade decades year years age era reign period dynasty""".split())
_NUMBER_WORDS = frozenset("""one two three four five six seven eight nine ten eleven twelve twenty thirty forty
fifty sixty seventy eighty ninety hundred hundreds thousand thousands million millions billion billions dozen
dozens few several many half""".split())
_ORDINALS = frozenset("""first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth
thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth""".split())
_TIME_NOUNS = frozenset("year years century date decade month day time period era".split())
_QUANTITY = frozenset("many much long old far large big often".split())
STEM_PREFIX = 5  # letters two words must share, one beginning the other, to count as one name (Europe ~ European)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _question_words(question: str) -> list[str]:
    """A question's words, lower-cased, from its question word on: "In what year ..." -> ["what", "year", ...]."""
    w = [x.lower() for x in re.findall(r"[A-Za-z]+", question)]
    if len(w) > 1 and w[0] in _PREPOSITIONS and w[1] in _WH_SHORT | {"what", "how"}:
        return w[1:]  # "In what year ...", "To whom ..."
    return w


def wants_a_phrase(question: str) -> bool:
    """Whether a question asks for a name, date, number or other short phrase rather than an explanation, read
    from its first words: who, when, where, which, "how many", "what year", "in what city" ask for a phrase;
    why, "how does", "what is the role of" ask for a statement.

    SQuAD's answers are phrases (median 1 word); COVID-QA's are mostly statements (median 9 words), and a
    copied phrase then misses most of them while the evidence sentence holding it contains 0.29 of them on
    the tuning half (the phrase: 0.15).
    """
    w = _question_words(question)
    if not w:
        return False
    if w[0] in _WH_SHORT:
        return True
    if w[0] in ("how", "what") and len(w) > 1:
        return w[1] not in _AUX or w[-1] == "called" or "name" in w[:4]  # "what city", "what was it called"
    return False


def answer_type(question: str) -> str | None:
    """"time" for a question asking when, "number" for one asking how many, much, long or old; else None."""
    w = _question_words(question)
    if not w:
        return None
    if w[0] == "when" or (w[0] in ("what", "which") and len(w) > 1 and w[1] in _TIME_NOUNS):
        return "time"
    if w[0] == "how" and len(w) > 1 and w[1] in _QUANTITY:
        return "number"
    return None


def fits_type(kind: str | None, span: str) -> bool:
    """Whether a span can be the answer to a question of that answer_type: a date or a quantity holds a digit or a
    word for one."""
    if kind is None or any(c.isdigit() for c in span):
        return True
    said = {w.lower() for w in words(span)}
    return bool(said & (_ORDINALS | (_TIME_WORDS if kind == "time" else _NUMBER_WORDS)))


def normalized_word(word: str) -> str:
    word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))  # Hervé = Herve
    word = re.sub(r"['’]s?$", "", word)
    if any(c.isdigit() for c in word):
        return re.sub(r"\D", "", word) or word
    return light_stem(word.lower())


def key_terms(question: str) -> set[str]:
    """The names and numbers a question asks about: capitalised words after its first, and anything with a
    digit (normalised: "Normans'" -> "norman", "1100s" -> "1100", "11th" -> "11")."""
    out = set()
    for i, w in enumerate(words(question)):
        if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper() and w.lower() not in STOP_WORDS):
            out.add(normalized_word(w))
    return out


def names_all(terms: set[str], text: str) -> bool:
    """Every key term occurs among the (normalised) words of text, or a name shares its stem with one of them:
    one begins the other and both have STEM_PREFIX letters or more ("Europe" and "European", "Normandy" and
    "Normans"). Numbers must occur as they are."""
    have = {normalized_word(w) for w in words(text)}

    def named(term: str) -> bool:
        if term in have:
            return True
        if len(term) < STEM_PREFIX or term.isdigit():
            return False
        return any(len(h) >= STEM_PREFIX and (h.startswith(term) or term.startswith(h)) for h in have)

    return all(named(t) for t in terms)


def repeats_question(span: str, question: str) -> bool:
    """An answer made only of the question's own words ("Where was Dyrrachium?" -> "Dyrrachium")."""
    said = {normalized_word(w) for w in words(question)}
    content = {normalized_word(w) for w in words(span) if w.lower() not in STOP_WORDS}
    return bool(content) and content <= said


def supported(answer: str, evidence: Sequence[str]) -> bool:
    """The support check for any text shown as an answer: each of its content words and numbers occurs in the
    evidence. Copied spans pass by construction; it guards everything else."""
    have = {normalized_word(w) for text in evidence for w in words(text)}
    return all(normalized_word(w) in have for w in words(answer) if w.lower() not in STOP_WORDS)
