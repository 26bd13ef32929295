"""Holding a written summary to its source, sentence by sentence, and keeping fragments out of every summary.

A sentence the model wrote is shown only when
- it is a whole sentence (`is_fragment`: no bare bullet, page header, heading underline, "the./configure" glue,
  no broken-off clause) and not a description of the text ("The article discusses ...") instead of its facts;
- it does not speak to the reader the way injected instructions do (`addresses_reader`: "ignore previous
  instructions", "tell the user ..."): a document can say that, a summary never repeats it as its own;
- every name, number and quoted term in it occurs in the source (`unsupported`, bot.text.support);
- its claim rests on one section (`rests_on`): most of its content words occur in that one section of the
  source. A sentence that mixes two sections' facts, or says what no section says, rests on none.
A sentence that fails is replaced by the source sentence closest to it (`closest_source_sentence`), which is
shown verbatim, or dropped when there is none. The section each sentence rests on is what the eval's
coverage counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.documents.chunk import split_sentences
from bot.services.summary_pipeline import is_complete
from bot.text.support import unsupported_terms

SUPPORT_SHARE = 0.7  # the share of a sentence's content words that one section must hold
MIN_WORDS = 4  # a shorter "sentence" is a heading or a label, not a statement

_STOPWORDS = frozenset("""a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just may me might more most must
my myself no nor not now of off on once only or other our ours ourselves out over own same she should so some such
than that the their theirs them themselves then there these they this those through to too under until up very was
we were what when where which while who whom why will with would you your yours yourself yourselves said says say
one two new like well many much us""".split())

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_GLUE = re.compile(r"[A-Za-z]\.{1,2}/|\b[a-z]{2,}\.[A-Z][a-z]")  # "the./configure", "end.Next": a lost break
_PAGE_HEADER = re.compile(r"^(?:page\s+\d+(?:\s+of\s+\d+)?|\d+\s*/\s*\d+|-\s*\d+\s*-)$", re.IGNORECASE)
_UNDERLINE = re.compile(r"^[\s=\-_*#~+.•·]+$")
_BULLET_LEAD = re.compile(r"^\s*(?:[-*•·‣◦▪]+|\d{1,2}[.)])\s+")
_META = re.compile(r"^(?:the|this|these|in (?:the|this))\s+(?:text|article|document|passage|section|excerpt|notes?|"
                   r"summary|part|report|story)\b[^.]{0,40}?\b(?:discuss|describe|is about|are about|talk|mention|"
                   r"provide|explain|highlight|outline|cover|present|focus|summari[sz]e|detail|state)"
                   r"|^it (?:discusses|describes|highlights|outlines|mentions|explains|summari[sz]es|covers|focuses)\b"
                   r"|^(?:the )?(?:main|key) (?:facts?|points?)\b|^read (?:the|this|more)\b",
                   re.IGNORECASE)
_READER = re.compile(
    r"\b(?:ignore|disregard|forget)\b[^.]{0,30}\b(?:previous|prior|above|earlier|all|your)\b[^.]{0,20}"
    r"\b(?:instructions?|prompts?|rules?|messages?)\b"
    r"|\b(?:tell|inform|remind|ask|convince) the (?:user|reader)\b"
    r"|\b(?:as an ai|language model|system prompt|you are (?:now )?(?:a|an|the) (?:assistant|ai|bot|chatbot))\b"
    r"|\b(?:assistant|chatbot|ai)s?,? (?:must|should|shall) (?:say|reply|answer|respond|tell|write)\b"
    r"|\bnote to the (?:ai|assistant|model|bot|chatbot)\b|\bignore the question\b"
    r"|\bfrom now on\b[^.]{0,30}\b(?:answer|reply|respond|say)\b",
    re.IGNORECASE)


def strip_bullet(line: str) -> str:
    """A line of the model's reply without its list marker ("- ", "* ", "1. ")."""
    return _BULLET_LEAD.sub("", line).strip()


def is_fragment(sentence: str) -> bool:
    """Not a whole statement: a bare bullet, a page header or number, a heading underline, text glued across a
    lost line break ("the./configure"), too few words, or a sentence without its start or end."""
    s = strip_bullet(sentence.strip()) if not _UNDERLINE.match(sentence) else ""
    if not s or _UNDERLINE.match(s) or _PAGE_HEADER.match(s) or _GLUE.search(s) or "•" in s:
        return True
    return len(_WORD.findall(s)) < MIN_WORDS or not is_complete(s)


def describes_the_text(sentence: str) -> bool:
    """"The article discusses ...": about the text, not its facts."""
    return bool(_META.search(sentence.strip()))


def addresses_reader(sentence: str) -> bool:
    """It reads as instructions to an assistant or its reader ("ignore previous instructions", "tell the user
    that ..."): never a summary's own statement."""
    return bool(_READER.search(sentence))


def presentable(sentence: str) -> bool:
    """Whole, about the facts, and not instructions: may be shown in a summary (the source's or the model's)."""
    return not (is_fragment(sentence) or addresses_reader(sentence) or describes_the_text(sentence))


# --------------------------------------------------------------------------------------------- support


def _stem(word: str) -> str:
    word = word.lower().replace("’", "'")
    word = re.sub(r"'s$", "", word)
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_terms(text: str) -> set[str]:
    """The content words of text (no stopwords), lower-cased and crudely stemmed; numbers kept."""
    return {_stem(w) for w in _WORD.findall(text) if w.lower() not in _STOPWORDS and (len(w) > 2 or w.isdigit())}


@dataclass
class Source:
    """A document as the checker sees it: its sections (what coverage counts) and its sentences."""

    sections: list[str]

    def __post_init__(self) -> None:
        self.text = "\n\n".join(self.sections)
        self.section_terms = [content_terms(s) for s in self.sections]
        self.sentences = [(i, strip_bullet(s)) for i, section in enumerate(self.sections)
                          for s in split_sentences(section)]
        self.sentence_terms = [content_terms(s) for _, s in self.sentences]


def unsupported(sentence: str, source: Source) -> list[str]:
    """The names, numbers and quoted terms of `sentence` that the source does not hold (bot.text.support,
    the check written answers pass too)."""
    return unsupported_terms(sentence, source.text)


def rests_on(sentence: str, source: Source, share: float = SUPPORT_SHARE) -> int | None:
    """The section holding the largest share of the sentence's content words, when that share is at least
    `share`; else None (the claim rests on no one section)."""
    terms = content_terms(sentence)
    if not terms:
        return None
    shares = [len(terms & st) / len(terms) for st in source.section_terms]
    best = max(range(len(shares)), key=shares.__getitem__)
    return best if shares[best] >= share else None


def closest_source_sentence(sentence: str, source: Source, taken: set[str]) -> tuple[str, int] | None:
    """The presentable source sentence that shares the most content words with `sentence` (F1 of the two
    sets), not one already `taken`, with its section; None when no sentence shares any."""
    terms = content_terms(sentence)
    best, best_score = None, 0.0
    for (section, candidate), cand_terms in zip(source.sentences, source.sentence_terms, strict=True):
        common = len(terms & cand_terms)
        if not common or candidate in taken:
            continue
        score = 2 * common / (len(terms) + len(cand_terms))
        if score > best_score and presentable(candidate):
            best, best_score = (candidate, section), score
    return best


@dataclass
class Checked:
    sentences: list[str]  # what the summary says, in order
    sections: list[int]  # the section each sentence rests on
    replaced: int = 0  # sentences of the model's that failed and were replaced by a source sentence
    dropped: int = 0  # sentences of the model's that failed with no source sentence to stand in


def check_sentences(written: list[str], source: Source, share: float = SUPPORT_SHARE) -> Checked:
    """Every written sentence kept, replaced by its closest source sentence, or dropped (see the module's
    docstring); repeats are dropped."""
    out = Checked([], [])
    taken: set[str] = set()
    for sentence in written:
        if is_fragment(sentence) or addresses_reader(sentence):
            out.dropped += 1
            continue
        section = None if describes_the_text(sentence) or unsupported(sentence, source) else \
            rests_on(sentence, source, share)
        if section is None:
            closest = closest_source_sentence(sentence, source, taken)
            if closest is None:
                out.dropped += 1
                continue
            (sentence, section), out.replaced = closest, out.replaced + 1
        if sentence in taken or _repeats(sentence, out.sentences):
            continue
        taken.add(sentence)
        out.sentences.append(sentence)
        out.sections.append(section)
    return out


def _repeats(sentence: str, kept: list[str], limit: float = 0.8) -> bool:
    terms = content_terms(sentence)
    return any(terms and len(terms & content_terms(k)) / len(terms) >= limit for k in kept)
