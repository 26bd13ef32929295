"""Summaries that cover a whole document (or conversation): salient sentences, checked against the source.

1. Windows: the text is cut into units (a piece that fits, else its sentences, a sentence that does not fit
   at word boundaries, a "word" longer than that at characters), each counted once by the tokenizer, and
   packed into windows of at most `budget` tokens; each window is counted once more as a whole, because
   joining units can merge tokens. Linear in the length of the text, whatever that length.
2. Extract: every sentence is embedded with the sentence encoder, window by window (progress, cancel).
   A sentence's salience is its cosine to the document's mean embedding (for unit vectors that is its mean
   similarity to every other sentence, i.e. degree centrality, in linear time) plus a prior for the opening
   sentences, which carry the point of news and reports. MMR then picks salient sentences that do not repeat
   each other, up to a word budget that grows with the document; they are shown in reading order.
3. Rewrite (`rewrite=True`, off by default): the chat model is asked to shorten each picked sentence; a
   rewrite is kept only when it is one complete sentence, shorter than the original, close to it in meaning
   (encoder cosine) and passes the support check, first words included; otherwise the original stays.
   Measured with `docent eval summary --rewrite` (SmolLM2-135M, a seeded 12-article PyrXSum sample and 2
   QMSum meetings): ROUGE-1 +0.5 and +0.2, but 4 of the 10 kept rewrites of the articles changed who did
   what or crossed two names ("the charity told the programme it had been overwhelmed" became "the
   programme has been overwhelmed"), which no name-and-number check can see, and it costs the model's time
   (2 s an article on a quiet machine, 35-50 s on a busy one). So extracted sentences are shown as they are;
   a model big enough to write writes the whole summary instead (bot.services.summary_writer).
4. Support check: every number and capitalised name (a capitalised word that does not start a sentence)
   must occur in the source; `unsupported_terms` is also what the eval's "unsupported rate" counts.

Blocking code: callers run it in a worker thread and pass `progress` for a status line or a tqdm bar.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from bot.documents.chunk import CountTokens, cut_chars, split_sentences

Progress = Callable[[int, int], None]

WINDOW_TOKENS = 2048  # encoder tokens embedded between two progress reports
MIN_WORDS = 6  # shorter sentences ("OK.", "Yeah, sure.") are not candidates unless nothing longer exists
# Tuned with `docent eval summary` on the tuning halves of PyrXSum and QMSum together (one setting for news
# and meetings); ROUGE moved by about a point across the whole neighbourhood of these values.
LEAD_WEIGHT = 2.0  # the prior of the opening sentences, in units of the centrality's standard deviation
LEAD_FRACTION = 0.1  # the prior decays as exp(-i / scale), scale = this share of the sentences ...
LEAD_MIN = 3.0  # ... but at least this many
REDUNDANCY = 4.0  # MMR: the penalty per unit of cosine to the closest sentence already picked
REWRITE_PROMPT = ("Rewrite the user's sentence as one shorter sentence for a summary. Keep its names and "
                  "numbers. Reply with the sentence only.")


# ------------------------------------------------------------------------------------------ windows


_WORD = re.compile(r"\s*\S+")  # a word with the blanks before it: byte-level BPE counts " word" as in context


def cut_words(text: str, budget: int, count: CountTokens) -> list[tuple[str, int]]:
    """(piece, tokens) of `text` cut at word boundaries into pieces of at most `budget` tokens; each word is
    counted once, each piece once more."""
    pieces: list[str] = []
    current, size = "", 0
    for m in _WORD.finditer(text):
        word = m.group() if current else m.group().lstrip()
        n = count(word)
        if current and size + n > budget:
            pieces.append(current)
            current, size = "", 0
            word = word.lstrip()
            n = count(word)
        if n > budget:
            pieces.extend(cut_chars(word, count, budget))
            continue
        current += word
        size += n
    if current:
        pieces.append(current)
    # The sum of the words' counts is exact for byte-level BPE and WordPiece; a tokenizer that merges across
    # words can exceed it, so each piece is checked once and halved when it is over.
    out: list[tuple[str, int]] = []
    for p in pieces:
        n, words = count(p), p.split(" ")
        if n > budget and len(words) > 1:
            half = len(words) // 2
            out += cut_words(" ".join(words[:half]), budget, count) + cut_words(" ".join(words[half:]), budget, count)
        else:
            out.append((p, n))
    return out


def units(piece: str, budget: int, count: CountTokens) -> list[tuple[str, int]]:
    """(text, tokens) of the piece itself when it fits, else of its sentences, a sentence over the budget cut
    at word boundaries."""
    n = count(piece)
    if n <= budget:
        return [(piece, n)]
    out = []
    for sentence in split_sentences(piece):
        n = count(sentence)
        out += [(sentence, n)] if n <= budget else cut_words(sentence, budget, count)
    return out


def _pack(sizes: list[int], texts: list[str], budget: int, count: CountTokens, sep: str) -> list[range]:
    """Consecutive index ranges of units whose joined text fits `budget`; every window is counted once."""
    joint = count(sep)
    out: list[range] = []
    start = 0
    while start < len(sizes):
        end, size = start + 1, sizes[start]
        while end < len(sizes) and size + joint + sizes[end] <= budget:
            size += joint + sizes[end]
            end += 1
        while end - start > 1 and count(sep.join(texts[start:end])) > budget:  # a merge at a joint: shed one
            end -= 1
        out.append(range(start, end))
        start = end
    return out


def windows(pieces: list[str], budget: int, count_tokens: CountTokens, sep: str = "\n\n") -> list[str]:
    """Consecutive pieces packed into windows of at most `budget` tokens by real count; a piece that does not
    fit is cut at sentence boundaries, then at word boundaries. Every word of every piece is in one window."""
    if budget < 1:
        raise ValueError(f"window budget must be >= 1 token, not {budget}")
    parts = [u for p in pieces if p.strip() for u in units(p.strip(), budget, count_tokens)]
    texts, sizes = [t for t, _ in parts], [n for _, n in parts]
    return [sep.join(texts[r.start:r.stop]) for r in _pack(sizes, texts, budget, count_tokens, sep)]


# ------------------------------------------------------------------------------------- support check


_TERM = re.compile(r"\w+(?:[.,'’&-]\w+)*")
_NOT_NAMES = frozenset({"I", "I'm", "I've", "I'll", "I'd", "OK", "Ok"})


def _norm(term: str) -> str:
    term = term.lower().replace("’", "'")
    term = re.sub(r"'s$", "", term)
    return re.sub(r"(?<=\d),(?=\d{3})", "", term)  # 1,000 = 1000


def checked_terms(text: str, first_words: bool = False) -> list[str]:
    """The numbers (any word with a digit) and capitalised names in text: capitalised words that do not
    start a sentence, and with `first_words` those that do too (for generated text, where an invented name
    can open the sentence; a common word there is still found in the source, lower-cased)."""
    out = []
    for sentence in split_sentences(text):
        for j, m in enumerate(_TERM.finditer(sentence)):
            term = m.group()
            if any(c.isdigit() for c in term):
                out.append(term)
            elif (j > 0 or first_words) and term[0].isupper() and term not in _NOT_NAMES:
                out.append(term)
    return out


def source_terms(source: str) -> set[str]:
    """Every word of the source, normalised, with the parts of hyphenated and dotted words as well."""
    terms = set()
    for m in _TERM.finditer(source):
        word = _norm(m.group())
        terms.add(word)
        terms.update(p for p in re.split(r"[.,'&-]", word) if p)
    return terms


def unsupported_terms(text: str, source: set[str], first_words: bool = False) -> list[str]:
    """The checked terms of `text` that do not occur in the source (a set from `source_terms`)."""
    return [t for t in checked_terms(text, first_words) if _norm(t) not in source]


# ---------------------------------------------------------------------------------------- extraction


@dataclass
class Sentence:
    text: str
    tokens: int  # encoder tokens
    speaker: str | None = None  # who said it, when it comes from a "Speaker: words" turn
    whole: bool = True  # False: a piece of a sentence too long for the encoder, cut at words


@dataclass
class Summary:
    sentences: list[str]  # what the summary says, one sentence each, in reading order
    text: str  # Markdown for display: one bullet per sentence
    source_sentences: int = 0
    rewritten: int = 0  # sentences the model rewrote that passed every check
    unsupported: list[str] = field(default_factory=list)  # terms of the summary not in the source (should be [])
    written: bool = False  # the model wrote it (bot.services.summary_writer); else extracted sentences
    sections: int = 0  # written: the sections the document was read in; drawn: the one each sentence rests on
    drawn: list[int] = field(default_factory=list)
    digest: dict[str, list[str]] | None = None  # a conversation's "asked" / "answered" / "decided", extracted


def summary_words(document_words: int) -> int:
    """The word budget: a few sentences for an article, growing slowly (square root) for long documents."""
    return int(min(180, max(60, 2.5 * document_words ** 0.5)))


# Speech fillers carry nothing a summary needs, and transcripts are full of them (+0.5 ROUGE-1 on QMSum).
_FILLER = re.compile(r"(?<![\w'-])(?:uh|um|uhm|umm|erm|hmm|mm|mhm|uh-huh|mm-hmm)(?![\w'-]),?\s*", re.IGNORECASE)


def tidy(sentence: str) -> str:
    """A picked sentence without speech fillers ("uh", "um") and the blanks they leave before punctuation."""
    text = " ".join(_FILLER.sub("", sentence).split())
    text = re.sub(r"[\s,]+(?=[.;:!?])|\s+(?=,)", "", text).replace(",,", ",")
    return text if re.search(r"\w", text) else sentence


_COMPLETE = re.compile(r"[.!?…][\"'”’)\]]*$")
# "Speaker: words" at the start of a line: a turn of a transcript or chat log (or a "Label: value" line).
_LABEL = re.compile(r"[A-Z][\w .'’&-]{0,38}:(?=\s)")
_TURN = re.compile(r"\n(?=[A-Z][\w .'’&-]{0,38}:\s)")


def speaker(turn: str) -> str | None:
    """The label before the colon of a "Speaker: words" turn, else None."""
    m = _LABEL.match(turn)
    return m.group()[:-1] if m else None


def is_complete(sentence: str) -> bool:
    """It starts like a sentence (not in lower case) and ends with end punctuation: not a fragment, such as
    a turn broken off ("... what our manufacturer offers,") or the rest of one."""
    m = _LABEL.match(sentence)
    body = sentence[m.end():].lstrip() if m else sentence
    return bool(body) and not body[0].islower() and bool(_COMPLETE.search(body))


def _body(sentence: str) -> str:
    """The sentence without a leading "Speaker:" label."""
    m = _LABEL.match(sentence)
    return sentence[m.end():].lstrip() if m else sentence


def content_words(sentence: str) -> int:
    """Words of the sentence, a leading "Speaker:" label not counted."""
    m = _LABEL.match(sentence)
    return len(sentence[m.end():].split() if m else sentence.split())


def document_sentences(pieces: list[str], limit: int, count: CountTokens) -> list[Sentence]:
    """Sentences of every piece in reading order, none over `limit` tokens (long ones cut at words), each
    repeated sentence once (stored chunks overlap by a few sentences; boilerplate repeats).

    A line that starts with "Speaker:" starts a new sentence: the sentence splitter joins single line breaks
    (PDF line wraps), which would run the unpunctuated turns of a transcript together. Speech fillers are
    dropped (`tidy`) before anything else looks at a sentence."""
    seen: set[str] = set()
    out = []
    for piece in pieces:
        for turn in _TURN.split(piece):
            who = speaker(turn)
            for sentence in map(tidy, split_sentences(turn)):
                key = " ".join(sentence.lower().split())
                if key in seen:
                    continue
                seen.add(key)
                n = count(sentence)
                if n <= limit:
                    out.append(Sentence(sentence, n, who))
                else:
                    out += [Sentence(p, k, who, whole=False) for p, k in cut_words(sentence, limit, count)]
    return out


def salience(vectors: np.ndarray, lead_weight: float = LEAD_WEIGHT, lead: float = LEAD_MIN) -> np.ndarray:
    """(N,) centrality (cosine to the mean embedding, standardised) plus a prior for the opening sentences
    that decays as exp(-i / lead). (Giving the prior only to sentences more central than average, to keep
    a meeting's opening small talk out, measured worse on QMSum's tuning half, R-2 4.31 against 4.81, and
    no better on PyrXSum's.)"""
    centroid = vectors.mean(axis=0)
    norm = float(np.linalg.norm(centroid))
    central = vectors @ centroid / norm if norm > 0 else np.zeros(len(vectors), dtype=np.float32)
    z = (central - central.mean()) / (float(central.std()) or 1.0)
    prior = np.exp(-np.arange(len(vectors)) / lead)
    return z + lead_weight * prior


def mmr(vectors: np.ndarray, scores: np.ndarray, lengths: list[int], candidates: Iterable[int], budget: int,
        redundancy: float = REDUNDANCY) -> list[int]:
    """Maximal marginal relevance: indices picked greedily by score - redundancy * (cosine to the closest
    picked one), up to `budget` words in all; one that would overshoot by over half its length is passed over."""
    pool = np.array(list(candidates), dtype=np.int64)
    picked: list[int] = []
    words = 0
    closest = np.zeros(len(vectors), dtype=np.float32)  # cosine to the closest picked sentence (0 = none)
    while len(pool) and words < budget:
        k = int(np.argmax(scores[pool] - redundancy * closest[pool]))
        best = int(pool[k])
        pool = np.delete(pool, k)
        if picked and words + lengths[best] > budget + lengths[best] / 2:
            continue
        picked.append(best)
        words += lengths[best]
        closest = np.maximum(closest, vectors @ vectors[best])
    return sorted(picked)


def extract(sentences: list[Sentence], vectors: np.ndarray, budget: int, lead_weight: float = LEAD_WEIGHT,
            lead_fraction: float = LEAD_FRACTION, redundancy: float = REDUNDANCY) -> list[int]:
    """Indices of the sentences that make the summary (`budget` words), in reading order."""
    lead = max(LEAD_MIN, lead_fraction * len(sentences))
    lengths = [content_words(s.text) for s in sentences]
    from bot.services.summary_check import presentable  # it builds on this module's checks

    candidates = [i for i, s in enumerate(sentences)
                  if s.whole and lengths[i] >= MIN_WORDS and is_complete(s.text) and presentable(_body(s.text))]
    if not candidates:  # a short chat, or text without punctuation: whatever there is
        candidates = [i for i, s in enumerate(sentences) if s.whole] or list(range(len(sentences)))
    return mmr(vectors, salience(vectors, lead_weight, lead), lengths, candidates, budget, redundancy)


# ------------------------------------------------------------------------------------------ rewriting


def complete_sentences(text: str) -> list[str]:
    """The sentences of generated text, without a last one cut off before its end punctuation."""
    out = split_sentences(text)
    if out and not _COMPLETE.search(out[-1]):
        out.pop()
    return out


def _rewrite(model, sentence: str, cancel: threading.Event | None) -> str:
    from bot.services.lm_gateway import (  # lazy: lm.engine's and lm.serve's (torch)
        BACKGROUND,
        GenerationConfig,
    )

    n = model.count_tokens(sentence)
    # greedy and loop-proof; a rewrite is shorter than the sentence, so its length bounds the output
    config = GenerationConfig(max_new_tokens=n + 8, temperature=0.0, repetition_penalty=1.0, no_repeat_ngram=3)
    messages = [{"role": "system", "content": REWRITE_PROMPT}, {"role": "user", "content": sentence}]
    # background: a long document's rewrites never hold up the chat replies waiting for the batch
    return "".join(model.stream_chat(messages, config, cancel, priority=BACKGROUND)).strip()


def _accept(original: str, rewritten: str, encoder, source: set[str], min_cosine: float = 0.8) -> str | None:
    """The rewrite when it is one complete, shorter, supported sentence close in meaning to the original."""
    sentences = complete_sentences(rewritten)
    if len(sentences) != 1 or unsupported_terms(sentences[0], source, first_words=True):
        return None
    candidate = sentences[0]
    if not (MIN_WORDS <= len(candidate.split()) < len(original.split())):
        return None
    a, b = encoder.encode([original, candidate])
    return candidate if float(a @ b) >= min_cosine else None


# ------------------------------------------------------------------------------------------ summaries


def _bullet(text: str, speaker: str | None) -> str:
    """One Markdown bullet; in a conversation it names who said it (once, in bold)."""
    if speaker is None:
        return f"- {text}"
    if text.startswith(speaker + ":"):
        text = text[len(speaker) + 1:].strip()
    return f"- **{speaker}:** {text}"


def _embed(encoder, sentences: list[Sentence], progress: Progress | None, cancel: threading.Event | None,
           extra_steps: int) -> tuple[np.ndarray, int]:
    """(N, dim) sentence embeddings, computed window by window so that long documents report progress, and
    the number of steps reported (windows + extra_steps)."""
    texts = [s.text for s in sentences]
    parts = _pack([s.tokens for s in sentences], texts, max(WINDOW_TOKENS, encoder.max_text_tokens),
                  encoder.count_tokens, " ")
    vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for n, part in enumerate(parts, 1):
        if cancel is not None and cancel.is_set():
            raise InterruptedError("summary cancelled")
        vectors[part.start:part.stop] = encoder.encode(texts[part.start:part.stop])
        if progress:
            progress(n, len(parts) + extra_steps)
    return vectors, len(parts) + extra_steps


def summarize(pieces: list[str], encoder, *, model=None, rewrite: bool = False, conversation: bool = False,
              max_words: int | None = None, progress: Progress | None = None,
              cancel: threading.Event | None = None, **weights) -> Summary:
    """A summary of all of `pieces` (sections, or conversation turns "Speaker: text"), in reading order.

    `encoder` embeds sentences (lm.encoder.Encoder); `model` (a ChatModel) is used only with rewrite=True.
    `weights` override extract's (for tuning). Progress counts the windows embedded, then one step for the
    rewriting. Raises InterruptedError when `cancel` is set.
    """
    pieces = [p.strip() for p in pieces if p.strip()]
    # a longer sentence would be truncated by the encoder, so it is cut (at words) first
    sentences = document_sentences(pieces, encoder.max_text_tokens, encoder.count_tokens)
    if not sentences:
        return Summary([], "")
    rewriting = rewrite and model is not None
    vectors, steps = _embed(encoder, sentences, progress, cancel, extra_steps=int(rewriting))
    words = sum(len(s.text.split()) for s in sentences)
    chosen = extract(sentences, vectors, max_words or summary_words(words), **weights)
    source = source_terms("\n".join(pieces))
    out, rewritten = [], 0
    for i in chosen:
        text = sentences[i].text
        if rewriting:
            if cancel is not None and cancel.is_set():
                raise InterruptedError("summary cancelled")
            better = _accept(text, _rewrite(model, text, cancel), encoder, source)
            if better is not None:
                text, rewritten = better, rewritten + 1
        out.append(text)
    if rewriting and progress:
        progress(steps, steps)
    speakers = [sentences[i].speaker if conversation else None for i in chosen]
    text = "\n".join(_bullet(t, who) for t, who in zip(out, speakers, strict=True))
    unsupported = [t for sentence in out for t in unsupported_terms(sentence, source)]
    return Summary(out, text, len(sentences), rewritten, unsupported)


def conversation_text(turns: list[dict]) -> list[str]:
    """A conversation's turns as "User: ..." / "Assistant: ..." pieces (the system prompt left out)."""
    return [f"{'User' if t['role'] == 'user' else 'Assistant'}: {t['content']}" for t in turns if t["role"] != "system"]


_DECISION = re.compile(r"\b(?:decided?|decision|agreed?|let's|we'll|we will|i'll|i will|plan(?:ned)?|going to|chose|"
                       r"settled|conclude[ds]?)\b", re.IGNORECASE)
DIGEST_ITEMS = 4  # the latest questions and answers a digest names


def _first_sentence(text: str) -> str:
    sentences = split_sentences(text)
    return tidy(sentences[0]) if sentences else ""


def conversation_digest(turns: list[dict]) -> Summary:
    """What a conversation asked, answered and decided, from its own sentences (no model): the user's latest
    questions, the first sentence of each of the assistant's answers, and sentences that decide or plan."""
    asked = [_first_sentence(t["content"]) for t in turns if t["role"] == "user"]
    answered = [_first_sentence(t["content"]) for t in turns if t["role"] == "assistant"]
    decided = [s for t in turns if t["role"] != "system" for s in split_sentences(t["content"])
               if _DECISION.search(s) and "?" not in s]
    digest = {"asked": [a for a in asked if a][-DIGEST_ITEMS:],
              "answered": list(dict.fromkeys(a for a in answered if a))[-DIGEST_ITEMS:],
              "decided": list(dict.fromkeys(decided))[-DIGEST_ITEMS:]}
    sentences = [s for items in digest.values() for s in items]
    return Summary(sentences, "", len(turns), digest=digest)
