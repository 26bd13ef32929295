"""Answers copied from the evidence: the path bot.services.answer takes with the tiny model (`[documents] writing =
"copy"`, or "auto" with a model too small to write). Question typing and the name checks it uses are in
bot.text.questions.

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

from collections.abc import Sequence

from bot.text.evidence import Evidence
from bot.text.questions import (
    STOP_WORDS,
    answer_type,
    fits_type,
    key_terms,
    names_all,
    repeats_question,
    supported,
    wants_a_phrase,
    words,
)

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
        spans = [s for s in spans
                 if any(w.lower() not in STOP_WORDS for w in words(s.text)) and fits_type(kind, s.text)]
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
