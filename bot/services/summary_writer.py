"""Summaries the chat model writes over the whole document (map-reduce), every sentence held to its source.

1. Sections: the document's pieces (sections under its headings, PDF pages; a stored document's chunks with
   their overlaps removed) packed in reading order into sections of at most `section_tokens` model tokens
   (summarize.windows: a piece too long is cut at sentences, then words).
2. Map: the model writes notes on each section: a few sentences of its facts. A document of one section
   skips this step: its summary is written from the text itself.
3. Reduce: the notes, in order, are combined by the model into the summary of `sentences` sentences. Notes too
   long for one prompt are combined group by group first, then again.
4. Check (bot.services.summary_check): each sentence is kept, replaced by the closest source sentence, or
   dropped; what is left says nothing the source does not, and each sentence names the section it rests on.
A conversation is summarized the same way, with instructions to say what was asked, answered and decided.

The model is reached through one seam, a `Write` function (instructions, text, max new tokens) -> reply;
`model_writer` makes it from a ChatModel: greedy, capped, no repeated 5-gram (a small model falls into
loops), at background priority so that summaries never hold up chat replies. Progress counts the model's
calls; /cancel (the `cancel` event) stops between calls and inside one. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.documents.chunk import CountTokens, split_sentences
from bot.services.summary_check import Source, check_sentences, strip_bullet, unsupported
from bot.services.summary_pipeline import Progress, complete_sentences, windows

Write = Callable[[str, str, int], str]  # (instructions, text, max_new_tokens) -> the model's reply

SECTION_TOKENS = 1100  # model tokens of document text per section (the map step's prompt)
NOTE_TOKENS = 120  # the most a section's notes may take
NOTE_SENTENCES = 3
SUMMARY_TOKENS = 60  # per sentence of the final summary
NO_REPEAT_NGRAM = 5
MAX_ROUNDS = 4  # reduce rounds: notes shrink each round; this bounds a pathological document

MAP_PROMPT = ("Write the {k} most important facts of the user's text as {k} short sentences: who did what, when "
              "and where, with the names and numbers exactly as the text gives them. State the facts themselves; "
              "never write about the text (no \"The text says\", \"This section\"). Use only what the text states.")
SUMMARY_PROMPT = ("Summarize the user's text in {n}: the main facts themselves (who did what, what happened, "
                  "the key numbers), with names and numbers exactly as the text gives them. Never write about "
                  "the text (no \"The article discusses\"). Use only what the text states.")
REDUCE_PROMPT = ("The user's text is notes on each part of one document, in order. Write a summary of the whole "
                 "document in {n}, covering its parts from first to last: the main facts themselves, with names "
                 "and numbers exactly as the notes give them. Never write about the document or the notes. Use "
                 "only facts in the notes.")
CONVERSATION_PROMPT = ("The user's text is a conversation between a user and an assistant. Summarize it in {n}: "
                       "what the user asked about, what the assistant answered, and what was decided, if anything. "
                       "Write in the third person (\"The user asked ...\"). Use only what the conversation says.")
# words of the conversation prompt's framing that its source never holds; a checked sentence may use them
CONVERSATION_FRAME = "user assistant asked ask answered answer decided decide agreed explained said wanted"


@dataclass
class Written:
    sentences: list[str]  # the summary, one sentence each, in reading order
    sections: int  # how many sections the document was read in
    drawn: list[int] = field(default_factory=list)  # the section each sentence rests on
    notes: list[str] = field(default_factory=list)  # the map step's notes, one per section
    replaced: int = 0  # sentences of the model's replaced by source sentences
    dropped: int = 0  # sentences of the model's dropped
    unsupported: list[str] = field(default_factory=list)  # names/numbers shown that the source lacks (kept [])
    calls: int = 0  # model calls made

    @property
    def coverage(self) -> float:
        """The share of the document's sections that the summary draws on."""
        return len(set(self.drawn)) / self.sections if self.sections else 0.0


def summary_sentences(sections: int) -> int:
    """How many sentences: three for a short text, growing slowly with the number of sections."""
    return min(8, 3 + sections // 3)


def model_writer(model, cancel: threading.Event | None = None) -> Write:
    """The Write seam on a ChatModel: greedy, capped at max_new_tokens, loop-proof, background priority."""
    from bot.services.lm_gateway import (  # lazy: lm.engine's and lm.serve's (torch)
        BACKGROUND,
        GenerationConfig,
    )

    def write(instructions: str, text: str, max_new_tokens: int) -> str:
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, repetition_penalty=1.0,
                                  no_repeat_ngram=NO_REPEAT_NGRAM)
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": text}]
        out = []
        # each call its own stop event: the server sets the one it is given when the reply ends, and the job's
        # must stay clear for the next call; the job's is watched between tokens instead
        for delta in model.stream_chat(messages, config, threading.Event(), priority=BACKGROUND):
            out.append(delta)
            if cancel is not None and cancel.is_set():
                break
        return "".join(out)

    return write


def section_budget(context_tokens: int) -> int:
    """Tokens of text per section that leave the instructions and the reply room in the model's context."""
    return max(128, min(SECTION_TOKENS, context_tokens - 600))


def unique_pieces(pieces: list[str]) -> list[str]:
    """The pieces without the sentences an earlier piece already had (stored chunks overlap by a few
    sentences), each piece's paragraphs kept."""
    seen: set[str] = set()
    out = []
    for piece in pieces:
        paragraphs = []
        for paragraph in re.split(r"\n[ \t]*\n", piece):
            kept = []
            for sentence in split_sentences(paragraph):
                key = " ".join(sentence.lower().split())
                if key not in seen:
                    seen.add(key)
                    kept.append(sentence)
            if kept:
                paragraphs.append(" ".join(kept))
        if paragraphs:
            out.append("\n\n".join(paragraphs))
    return out


def sections_of(pieces: list[str], count: CountTokens, budget: int = SECTION_TOKENS) -> list[str]:
    """The document's pieces packed in reading order into sections of at most `budget` tokens."""
    return windows(unique_pieces(pieces), budget, count)


def reply_sentences(reply: str) -> list[str]:
    """The sentences of a reply, list markers removed, a last sentence cut off by the token cap left out."""
    lines = [strip_bullet(line) for line in reply.strip().splitlines()]
    text = "\n\n".join(line for line in lines if line)
    return [s for paragraph in text.split("\n\n") for s in complete_sentences(paragraph)]


def _how_many(n: int) -> str:
    return "one sentence" if n == 1 else f"{n} sentences"


class _Calls:
    """The model's calls, counted for progress and checked for /cancel before each."""

    def __init__(self, write: Write, total: int, progress: Progress | None, cancel: threading.Event | None):
        self.write, self.total, self.progress, self.cancel, self.done = write, total, progress, cancel, 0

    def __call__(self, instructions: str, text: str, max_new_tokens: int) -> str:
        if self.cancel is not None and self.cancel.is_set():
            raise InterruptedError("summary cancelled")
        reply = self.write(instructions, text, max_new_tokens)
        if self.cancel is not None and self.cancel.is_set():  # the reply may have been cut short by it
            raise InterruptedError("summary cancelled")
        self.done += 1
        if self.progress:
            self.progress(self.done, max(self.total, self.done))
        return reply


def _reduce(notes: list[str], calls: _Calls, count: CountTokens, budget: int, n: int) -> str:
    """The notes combined into one text of n sentences, group by group while they do not fit one prompt."""
    for _ in range(MAX_ROUNDS):
        groups = windows(notes, budget, count)
        if len(groups) == 1:
            break
        calls.total += len(groups)
        shorter = [calls(REDUCE_PROMPT.format(n=_how_many(n)), g, SUMMARY_TOKENS * n) for g in groups]
        if len(windows(shorter, budget, count)) >= len(groups):  # no shorter: another round would not help
            notes = shorter
            break
        notes = shorter
    # the final call was counted from the start; after MAX_ROUNDS (never in practice) the first group that fits
    return calls(REDUCE_PROMPT.format(n=_how_many(n)), windows(notes, budget, count)[0], SUMMARY_TOKENS * n)


def write_summary(pieces: list[str], write: Write, count: CountTokens, *, sentences: int | None = None,
                  section_tokens: int = SECTION_TOKENS, reduce_tokens: int | None = None,
                  progress: Progress | None = None, cancel: threading.Event | None = None,
                  share: float | None = None) -> Written:
    """The model's summary of all of `pieces`, checked against them (see the module's docstring).

    `count` counts the model's tokens; the notes combined in one prompt take at most `reduce_tokens` (default:
    `section_tokens`). Raises InterruptedError when `cancel` is set."""
    sections = sections_of(pieces, count, section_tokens)
    if not sections:
        return Written([], 0)
    n = sentences or summary_sentences(len(sections))
    calls = _Calls(write, len(sections) + 1 if len(sections) > 1 else 1, progress, cancel)
    notes: list[str] = []
    if len(sections) == 1:
        draft = calls(SUMMARY_PROMPT.format(n=_how_many(n)), sections[0], SUMMARY_TOKENS * n)
    else:
        for section in sections:
            reply = calls(MAP_PROMPT.format(k=NOTE_SENTENCES), section, NOTE_TOKENS)
            # a note's sentence that names what its section does not is left out before it can spread
            notes.append(" ".join(s for s in reply_sentences(reply) if not unsupported(s, Source([section])))
                         or "")
        draft = _reduce([note for note in notes if note], calls, count, reduce_tokens or section_tokens, n) \
            if any(notes) else ""
    source = Source(sections)
    return balanced(_checked(reply_sentences(draft), n, source, notes, calls.done, share), source, n, share)


def balanced(written: Written, source: Source, n: int, share: float | None = None) -> Written:
    """The summary spread over the whole document: the sections are cut into n consecutive parts; for each part
    the summary draws on nothing from, a sentence of its notes (checked like the rest) takes the place of the
    last sentence of the part drawn on most. In reading order. (The combining step favours the first notes:
    the GPL-3's summary drew on 2 of 7 sections.)"""
    sections = len(source.sections)
    if sections < 2 or not written.notes:
        return written
    parts = min(n, sections)
    part = [i * parts // sections for i in range(sections)]  # section -> its part
    pairs = list(zip(written.sentences, written.drawn, strict=True))
    for missing in range(parts):
        if any(part[d] == missing for _, d in pairs):
            continue
        notes = [s for i, note in enumerate(written.notes) if part[i] == missing and note
                 for s in reply_sentences(note)]
        checked = check_sentences(notes, source, **({"share": share} if share is not None else {}))
        fresh = [(s, d) for s, d in zip(checked.sentences, checked.sections, strict=True)
                 if part[d] == missing and s not in written.sentences]
        if not fresh:
            continue
        if len(pairs) >= n:
            counts = {p: sum(part[d] == p for _, d in pairs) for p in range(parts)}
            crowded = max(counts, key=counts.__getitem__)
            if counts[crowded] < 2:
                break
            pairs.remove([x for x in pairs if part[x[1]] == crowded][-1])
        pairs.append(fresh[0])
    pairs.sort(key=lambda x: x[1])
    written.sentences, written.drawn = [s for s, _ in pairs], [d for _, d in pairs]
    return written


def write_conversation_summary(turns: list[str], write: Write, count: CountTokens, *, sentences: int = 3,
                               section_tokens: int = SECTION_TOKENS, progress: Progress | None = None,
                               cancel: threading.Event | None = None) -> Written:
    """What a conversation ("User: ..." / "Assistant: ..." turns) asked, answered and decided, in a few
    sentences the model writes, checked against the conversation (its latest turns when it is long)."""
    text = "\n".join(turns)
    while len(turns) > 1 and count(text) > section_tokens:
        turns = turns[1:]
        text = "\n".join(turns)
    if not text.strip():
        return Written([], 0)
    calls = _Calls(write, 1, progress, cancel)
    draft = calls(CONVERSATION_PROMPT.format(n=_how_many(sentences)), text, SUMMARY_TOKENS * sentences)
    source = Source([text + "\n\n" + CONVERSATION_FRAME])
    return _checked(reply_sentences(draft), sentences, source, [], calls.done, None)


def _checked(draft: list[str], n: int, source: Source, notes: list[str], calls: int,
             share: float | None) -> Written:
    """The draft's first n sentences that pass the check (or stand in for one that failed)."""
    checked = check_sentences(draft, source, **({"share": share} if share is not None else {}))
    del checked.sentences[n:], checked.sections[n:]
    missing = [t for s in checked.sentences for t in unsupported(s, source)]
    return Written(checked.sentences, len(source.sections), checked.sections, notes, checked.replaced,
                   checked.dropped, missing, calls)
