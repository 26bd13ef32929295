"""Answers copied from the evidence: the path bot.services.answer takes with the tiny model, and when a written
answer fails its support check but a copied one passes.

    the best evidence sentences (evidence.select, via bot.services.answer)
      -> copy decoding (lm.spans): the model picks a span of the evidence as its answer
      -> support check: the sentence the model's best span came from, with the one before it, must name
         every name and number the question names; else "not found"
      -> a phrase question ("who", "when", "how many") is answered by the span, a question wanting a
         statement ("why", "what is") by the best sentence that names what it asks about
      -> the answer and that sentence (bot.services.answer shows it with its source); or None ("not found").

Why copying: SmolLM2-135M, asked to answer from six numbered chunks, rarely put the gold answer in its reply
although retrieval had put it in the prompt. It restated the question, invented dates and looped. Allowed
only to copy from the best five sentences, with three worked examples of short answers before the question,
it picks the right span about twice as often, and its answer can never say something the document does not.

Why names and numbers: SQuAD 2.0's unanswerable questions, like a user asking about something a document
does not cover, mostly ask about a name, date or number the evidence does not have ("When did Herve go up
against the Turks?" next to "Robert Crispin led the Normans of Edessa against the Turks."). The model will
still copy the nearest date; the check refuses an answer whose source does not name what was asked about.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from bot.services.evidence import Evidence
from lm.rank import light_stem

SCORE_MARGIN = 0.0  # a span that fails the support check gives way only to an equally likely one
# First tokens the copy decoder follows. With 8, a gold answer was among the candidate spans for 0.69 of
# the tuning half's answerable questions and the best span held it for 0.57; with 16, 0.78 and 0.59, but
# after the support check both answered 0.55, and 16 took 15% longer and said "not found" to fewer
# unanswerable questions. 32: as 16, at 1.7x the time of 8.
BEAMS = 8
CALIBRATION = 0.2  # the weight of the uninformative question's log-probability (lm.spans calibrated)
BASELINE_QUESTION = "What does the evidence mention?"

SYSTEM = "Answer the question with a short phrase copied from the evidence."
# Worked examples shown before every question: the model copies their form (a bare phrase, no sentence).
EXAMPLES = (
    ("The Eiffel Tower was completed in 1889 as the entrance arch to the World's Fair. Gustave Eiffel's company "
     "designed and built it.", "When was the Eiffel Tower completed?", "1889"),
    ("Penicillin was discovered by Alexander Fleming in London. It became the first widely used antibiotic "
     "during the Second World War.", "Who discovered penicillin?", "Alexander Fleming"),
    ("The Amazon river carries more water than any other river. Its basin covers about seven million square "
     "kilometres, most of it rainforest.", "How large is the Amazon basin?", "about seven million square kilometres"),
)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_STOP = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was were
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


def span_prompt(question: str, evidence: Sequence[Evidence], earlier: str | None = None) -> list[dict]:
    """The chat for copy decoding: instruction, worked examples, then the evidence with the best sentence
    last (nearest the question, where a small model attends most) and the question."""
    messages = [{"role": "system", "content": SYSTEM}]
    for text, q, a in EXAMPLES:
        messages += [{"role": "user", "content": f"Evidence:\n{text}\n\nQuestion: {q}"},
                     {"role": "assistant", "content": a}]
    lines = "\n".join(e.text for e in reversed(evidence))
    asked = f"Earlier question: {earlier}\nQuestion: {question}" if earlier else f"Question: {question}"
    messages.append({"role": "user", "content": f"Evidence:\n{lines}\n\n{asked}"})
    return messages


def fitting_evidence(model, question: str, evidence: Sequence[Evidence], earlier: str | None,
                     max_tokens: int) -> list[Evidence]:
    """The strongest evidence whose copy-decoding prompts (the question's and the baseline's) leave room for a
    `max_tokens` answer in the model's context: the weakest sentences go first (dense text, such as a run without
    spaces, can hold many tokens a sentence). [] when not even the best one fits: then there is no span."""
    for n in range(len(evidence), 0, -1):
        if all(model.leaves_room(chat, max_tokens) for chat in (span_prompt(question, evidence[:n], earlier),
                                                                  span_prompt(BASELINE_QUESTION, evidence[:n]))):
            return list(evidence[:n])
    return []


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


def _norm(word: str) -> str:
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
        if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper() and w.lower() not in _STOP):
            out.add(_norm(w))
    return out


def names_all(terms: set[str], text: str) -> bool:
    """Every key term occurs among the (normalised) words of text, or a name shares its stem with one of them:
    one begins the other and both have STEM_PREFIX letters or more ("Europe" and "European", "Normandy" and
    "Normans"). Numbers must occur as they are."""
    have = {_norm(w) for w in words(text)}

    def named(term: str) -> bool:
        if term in have:
            return True
        if len(term) < STEM_PREFIX or term.isdigit():
            return False
        return any(len(h) >= STEM_PREFIX and (h.startswith(term) or term.startswith(h)) for h in have)

    return all(named(t) for t in terms)


def repeats_question(span: str, question: str) -> bool:
    """An answer made only of the question's own words ("Where was Dyrrachium?" -> "Dyrrachium")."""
    said = {_norm(w) for w in words(question)}
    content = {_norm(w) for w in words(span) if w.lower() not in _STOP}
    return bool(content) and content <= said


def supported(answer: str, evidence: Sequence[str]) -> bool:
    """The support check for any text shown as an answer: each of its content words and numbers occurs in the
    evidence. Copied spans pass by construction; it guards everything else."""
    have = {_norm(w) for text in evidence for w in words(text)}
    return all(_norm(w) in have for w in words(answer) if w.lower() not in _STOP)


def choose(spans, question: str, evidence: Sequence[Evidence], margin: float = SCORE_MARGIN,
           statement: bool = False):
    """(span, the evidence sentence it came from) for the best span that passes the support check, or None.

    `spans` are lm.spans.Span, best first. A span's source is the sentence holding it that names the question's
    key terms; the sentence before it counts too, for "he" and "it".

    A phrase question's spans must hold a word that is not a stopword, and a date or a quantity where the
    question asks when or how many (answer_type); the others are passed over before the margin is counted.

    When the model's favourite span only repeats the question ("Where was Dyrrachium?" -> "Dyrrachium"), it
    did not find a phrase that answers it, and a phrase question is "not found". A `statement` question is
    answered by a whole sentence, and the span naming its subject is how the model points at that sentence
    ("HIV-1 infection in children" for "What causes HIV-1 infection in children?"), so repeats are skipped.
    """
    terms = key_terms(question)
    texts = [e.text for e in evidence]
    if statement:
        spans = [s for s in spans if s.text and not repeats_question(s.text, question)]
    else:  # a phrase names something: no span of stopwords alone ("The"), nor a name where a date was asked for
        kind = answer_type(question)
        spans = [s for s in spans if any(w.lower() not in _STOP for w in words(s.text)) and fits_type(kind, s.text)]
    if not spans:
        return None
    for span in spans:
        if span.logprob < spans[0].logprob - margin:
            break
        if not span.text or repeats_question(span.text, question) or not supported(span.text, texts):
            continue
        for e in evidence:
            if span.text in e.text and names_all(terms, f"{e.before} {e.text}"):
                return span, e
    return None


async def copy_answer(question: str, evidence: Sequence[Evidence], *, model, max_tokens: int,
                      earlier: str | None = None) -> tuple[str, Evidence] | None:
    """(the copied answer, the sentence it rests on) for a question and its evidence, best first; None: not found.

    A phrase question is answered by the span, a statement question by the best sentence that names what it
    asks about (else the span's own sentence)."""
    read = fitting_evidence(model, question, evidence, earlier, max_tokens)
    spans = [] if not read else await model.copy_spans(
        span_prompt(question, read, earlier), [e.text for e in read],
        baseline=span_prompt(BASELINE_QUESTION, read), calibration=CALIBRATION, max_tokens=max_tokens, beams=BEAMS)
    phrase = wants_a_phrase(question)
    chosen = choose(spans, question, evidence, statement=not phrase)
    if chosen is None:
        return None
    span, source = chosen
    if phrase:
        return span.text[:1].upper() + span.text[1:], source
    best = evidence[0]  # a statement: the best sentence that names what was asked about, else the span's own
    if names_all(key_terms(question), f"{best.before} {best.text}"):
        source = best
    return source.text, source
