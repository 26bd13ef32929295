"""bot.services.summary_pipeline: token-exact windows on long text, the support check, complete sentences, the
extractive choice (lead, centrality, redundancy, budget), rewrites that must pass every check, conversations,
progress and cancel. Tokens come from a tiny byte-level BPE (the kind SmolLM2 uses); sentence vectors from a
bag-of-words encoder, so that similar sentences really are similar."""

from __future__ import annotations

import re
import threading
import zlib

import numpy as np
import pytest

from bot.services import summary_pipeline as sm
from tests.support.tiny_gguf import train_tiny_tokenizer


@pytest.fixture(scope="module")
def count_tokens():
    tok = train_tiny_tokenizer(384)
    return lambda text: len(tok.encode(text).ids)


class BagOfWords:
    """A stand-in for lm.encoder.Encoder: hashed counts of the content words, L2-normalised; one token a word."""

    dim = 1024
    max_text_tokens = 254
    stop = frozenset("the and for was with after under this that has had his its from are will who".split())

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def encode(self, texts: list[str], batch_size: int = 64, progress=None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                if len(word) > 2 and word not in self.stop:
                    out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
            out[i] /= np.linalg.norm(out[i]) or 1.0
        return out


def _long_paragraph(words: int) -> str:
    """One paragraph of numbered sentences of 9-13 words, about `words` words in all."""
    vocab = "the river valley harbour council market grain winter bridge ferry tower road mill".split()
    sentences, n, i = [], 0, 0
    while n < words:
        body = [vocab[(i * 7 + j * 3) % len(vocab)] for j in range(8 + i % 5)]
        sentences.append(f"Sentence {i} says {' '.join(body)}.")
        n += len(sentences[-1].split())
        i += 1
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------- windows


def test_windows_of_a_long_single_paragraph_fit_by_real_count_and_lose_nothing(count_tokens):
    text = _long_paragraph(5000)
    parts = sm.windows([text], 300, count_tokens)
    assert len(parts) > 10
    assert all(count_tokens(w) <= 300 for w in parts)  # the real count, not a word ratio
    assert " ".join(parts).split() == text.split()  # every word, in order, none cut in two
    assert all(w.rstrip().endswith(".") for w in parts)  # cut at sentence boundaries when sentences fit


def test_a_sentence_longer_than_the_budget_is_cut_at_words_and_a_giant_word_at_characters(count_tokens):
    sentence = " ".join(f"word{i % 97} and more" for i in range(2000))  # 6,000 words, no punctuation
    parts = sm.windows([sentence], 128, count_tokens)
    assert all(count_tokens(w) <= 128 for w in parts)
    assert " ".join(parts).split() == sentence.split()
    blob = "x7Q" * 3000  # one 9,000-character "word"
    pieces = sm.windows([f"Before it. {blob} After it."], 64, count_tokens)
    assert all(count_tokens(p) <= 64 for p in pieces)
    assert "".join(pieces).replace(" ", "").replace("\n", "") == f"Beforeit.{blob}Afterit."


def test_windows_count_in_linear_time(count_tokens):
    """Every unit is counted about once: quadratic re-tokenisation of a growing window would count
    hundreds of times the text's length."""
    counted = []

    def counting(text: str) -> int:
        counted.append(len(text))
        return count_tokens(text)

    text = _long_paragraph(5000)
    sm.windows([text], 300, counting)
    assert sum(counted) < 8 * len(text)
    counted.clear()
    sm.windows([text.replace(".", "")], 300, counting)  # one 5,000-word sentence: cut word by word
    assert sum(counted) < 8 * len(text)


def test_windows_keep_small_pieces_whole_and_in_order(count_tokens):
    pieces = ["# Title\n- one item\n- another item", "A short paragraph.", "", "Another paragraph here."]
    parts = sm.windows(pieces, 1000, count_tokens)
    assert parts == ["# Title\n- one item\n- another item\n\nA short paragraph.\n\nAnother paragraph here."]
    budget = count_tokens(pieces[0]) + 1
    parts = sm.windows(pieces, budget, count_tokens)
    assert parts[0] == pieces[0] and all(count_tokens(p) <= budget for p in parts)
    assert "\n\n".join(parts) == "\n\n".join(p for p in pieces if p)
    with pytest.raises(ValueError, match="budget"):
        sm.windows(pieces, 0, count_tokens)


# --------------------------------------------------------------------------------------- support check


SOURCE = ("Wesley Sneijder has joined Nice on a free transfer. The 33-year-old won the Champions League with "
          "Inter Milan in 2010 and earned 1,000 caps' worth of praise. Nice's coach was pleased.")


def test_checked_terms_are_numbers_and_names_not_sentence_starts():
    assert sm.checked_terms("The club signed Sneijder in 2010. Nice paid 3.5 million to Inter Milan.") == \
        ["Sneijder", "2010", "3.5", "Inter", "Milan"]  # "The" and "Nice" start their sentences
    assert sm.checked_terms("I think OK is fine, I'm sure.") == []


def test_an_invented_name_or_number_is_unsupported():
    source = sm.source_terms(SOURCE)
    assert sm.unsupported_terms("Nice signed Wesley Sneijder, who won with Inter Milan in 2010.", source) == []
    assert sm.unsupported_terms("He earned 1000 caps for Nice's rivals, said Sneijder's agent.", source) == []
    assert sm.unsupported_terms("Arsenal signed Sneijder in 2014 from Inter.", source) == ["2014"]
    assert sm.unsupported_terms("The transfer to Nice surprised Neymar and Arsenal.", source) == ["Neymar", "Arsenal"]


class FakeModel:
    """A chat model whose every reply is `reply` (records the prompts it saw)."""

    def __init__(self, reply: str):
        self.reply, self.prompts = reply, []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream_chat(self, messages, sampling, cancel=None, priority=0):
        from bot.services.lm_gateway import BACKGROUND

        assert sampling.no_repeat_ngram >= 2 and sampling.temperature == 0.0  # loop-proof, greedy
        assert priority == BACKGROUND  # a summary's rewrites never hold up chat replies
        self.prompts.append(messages[-1]["content"])
        yield from self.reply.split(" ")[:1] + [" " + w for w in self.reply.split(" ")[1:]]


ARTICLE = [
    "Wesley Sneijder has joined the French club Nice on a free transfer after leaving Galatasaray in June.",
    "The Dutch midfielder won the Champions League with Inter Milan in 2010 under Jose Mourinho.",
    "Nice finished third in the league last season and face a play-off against Napoli this month.",
    "The weather in the city was mild on Saturday afternoon for the opening match of the season.",
    "Sneijder played in the 2010 World Cup final for the Netherlands and won league titles in four countries.",
    "Galatasaray won the Turkish league with Sneijder three times before his contract ended.",
    "Inter Milan sold the midfielder to Galatasaray in 2013 for a fee of about eight million euros.",
    "Nice supporters welcomed the signing of the Netherlands midfielder at the airport on Friday.",
]


@pytest.mark.parametrize("reply, kept", [
    ("Arsenal signed Sneijder from Galatasaray in June 2014.", False),  # invented name and number
    ("Sneijder has joined the French club Nice on a free transfer after leaving Galatasaray and", False),  # cut
    ("Sneijder has joined the French club Nice on a free transfer from Galatasaray.", True),
])
def test_a_rewrite_is_kept_only_when_complete_shorter_and_supported(reply, kept):
    model = FakeModel(reply)
    summary = sm.summarize(ARTICLE[:1], BagOfWords(), model=model, rewrite=True)
    assert model.prompts == [ARTICLE[0]]
    assert summary.sentences == [reply if kept else ARTICLE[0]]
    assert summary.rewritten == int(kept) and summary.unsupported == []


def test_without_rewrite_the_model_is_never_asked():
    model = FakeModel("Anything at all.")
    sm.summarize(ARTICLE, BagOfWords(), model=model)
    assert model.prompts == []


# ------------------------------------------------------------------------------------ complete sentences


def test_complete_sentences_drop_a_cut_off_ending():
    assert sm.complete_sentences("It rained. The match was") == ["It rained."]
    assert sm.complete_sentences('He said "yes." Then he left!') == ['He said "yes."', "Then he left!"]
    assert sm.is_complete("Grad G: So we stopped it.") and not sm.is_complete("Grad G: because of what it offers,")
    assert not sm.is_complete("and then the rest of it.")


def test_fragments_are_not_picked_when_sentences_exist():
    turns = ["Professor A: The recording software crashed twice during the first meeting of the week.",
             "Grad B: because the disk was full and nobody had noticed the warnings in the log,",
             "Professor A: and then the transcripts of the meeting were lost for the whole group.",
             "Grad B: We will add a second disk and check the free space before every meeting starts."]
    summary = sm.summarize(turns, BagOfWords(), max_words=200)
    assert summary.sentences == [turns[0], turns[3]]


def test_fillers_are_dropped():
    assert sm.tidy("So, uh, we should, um, start at 9.") == "So, we should, start at 9."
    assert sm.tidy("Grad G: Um, I think it is, uh.") == "Grad G: I think it is."
    assert sm.tidy("Uh-huh.") == "Uh-huh."  # nothing else in it: left alone
    assert sm.tidy("The umbrella and the hummingbird.") == "The umbrella and the hummingbird."


# ------------------------------------------------------------------------------------------ extraction


def test_the_summary_keeps_the_lead_skips_the_off_topic_and_stays_in_budget():
    summary = sm.summarize(ARTICLE, BagOfWords(), max_words=40)
    picked = [ARTICLE.index(s) for s in summary.sentences]
    assert 0 in picked  # the opening sentence of a news text ...
    assert 0 not in [ARTICLE.index(s) for s in sm.summarize(ARTICLE, BagOfWords(), max_words=40,
                                                                lead_weight=0).sentences]  # ... by its position
    assert 3 not in picked  # about nothing else in the article
    assert sum(len(s.split()) for s in summary.sentences) <= 40 * 1.5 and picked == sorted(picked)
    assert summary.text.splitlines() == [f"- {s}" for s in summary.sentences]
    assert summary.unsupported == []


def test_redundant_sentences_are_not_picked_twice():
    twin = "Wesley Sneijder has joined the French club Nice on a free transfer, after leaving Galatasaray in June."
    summary = sm.summarize([ARTICLE[0], twin, *ARTICLE[1:]], BagOfWords(), max_words=50)
    assert ARTICLE[0] in summary.sentences and twin not in summary.sentences
    overlapping_chunks = [" ".join(ARTICLE[:3]), " ".join(ARTICLE[2:])]  # stored chunks repeat a sentence
    summary = sm.summarize(overlapping_chunks, BagOfWords(), max_words=200)
    assert summary.source_sentences == len(ARTICLE) and len(set(summary.sentences)) == len(summary.sentences)


def test_the_budget_grows_with_the_document_but_is_bounded():
    assert sm.summary_words(300) == 60
    assert sm.summary_words(300) < sm.summary_words(2000) < sm.summary_words(100_000) == 180


def test_a_long_single_paragraph_is_summarized_with_progress(count_tokens):
    text = _long_paragraph(6000)
    seen = []
    summary = sm.summarize([text], BagOfWords(), progress=lambda i, n: seen.append((i, n)))
    assert len(seen) > 1 and seen[-1][0] == seen[-1][1] and [i for i, _ in seen] == list(range(1, len(seen) + 1))
    assert summary.sentences and all(s in text and s.endswith(".") for s in summary.sentences)


def test_cancel_stops_the_summary():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedError):
        sm.summarize(ARTICLE, BagOfWords(), cancel=cancel)


# ---------------------------------------------------------------------------------------- conversations


def test_a_conversation_summary_names_the_speakers():
    turns = sm.conversation_text([
        {"role": "system", "content": "You are docent."},
        {"role": "user", "content": "Which river floods the valley of Osterby every spring?"},
        {"role": "assistant", "content": "The Kelvara river floods the valley of Osterby every spring. "
                                         "The floods last about eleven days."},
        {"role": "user", "content": "thanks"},
    ])
    assert turns[0].startswith("User: Which river")
    summary = sm.summarize(turns, BagOfWords(), conversation=True)
    assert "- **User:** Which river floods the valley of Osterby every spring?" in summary.text.splitlines()
    assert "- **Assistant:** The floods last about eleven days." in summary.text.splitlines()
    assert summary.unsupported == []
    tiny = sm.summarize(["User: hi", "Assistant: Hello!"], BagOfWords(), conversation=True)
    assert tiny.sentences  # nothing long enough: the short turns are all there is
    assert sm.summarize([], BagOfWords()).sentences == []
