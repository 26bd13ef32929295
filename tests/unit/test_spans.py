"""lm.spans (copy decoding) on tiny real Transformers with a byte-level tokenizer (one token per byte).

With a byte tokenizer and evidence whose words start with distinct letters, the suffix trie never branches
after its first token, so the beam search with a beam per word is exhaustive: its best span must be the
best of all word-aligned spans, scored independently with full forwards (no cache).
"""

from __future__ import annotations

import math

import pytest
import torch

from lm.model import Transformer
from lm.spans import SpanDecoder, suffix_trie, word_ends
from tests.unit.test_engine import chain_model, tiny_config
from tests.unit.test_engine import tok as tok  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
EVIDENCE = "Mount Kelvara erupted in 1872 near Osterby."


@pytest.fixture(scope="module")
def model(tok) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(tiny_config(len(tok))).init_weights(seed=3).eval()
    with torch.no_grad():
        m.output.weight.mul_(20.0)  # a peaked distribution, so spans differ clearly in likelihood
    return m


def word_spans(text: str) -> set[str]:
    """Every span of text that starts at a word and ends after a word, with or without its closing punctuation."""
    words = text.split(" ")
    spans = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}
    return spans | {s.rstrip(".,") for s in spans}


@torch.inference_mode()
def reference_logprob(model, tok, decoder: SpanDecoder, prompt: list[int], span: str) -> float:
    """log P(span tokens, then an end token | prompt) from one full forward without a cache."""
    ids = tok.encode(span)
    logp = torch.log_softmax(model(torch.tensor([prompt + ids]))[0].float(), -1)  # (T, V)
    P = len(prompt)
    total = sum(float(logp[P - 1 + i, t]) for i, t in enumerate(ids))
    return total + float(torch.logsumexp(logp[P - 1 + len(ids), decoder.end_ids], -1))


def test_every_span_is_copied_from_the_evidence_and_word_aligned(model, tok):
    decoder = SpanDecoder(model, tok)
    evidence = ["The fox jumps over the lazy dog.", "Ash covered the valley in 1872, eleven days long."]
    spans = decoder.spans(tok.encode("Question: what happened?\n"), evidence, beams=6, keep=50)
    assert spans
    for s in spans:
        holder = next(e for e in evidence if s.text in e)
        start = holder.index(s.text)
        end = start + len(s.text)
        assert start == 0 or holder[start - 1] == " ", s.text  # starts at a word
        assert end == len(holder) or not holder[end].isalnum() or not holder[end - 1].isalnum(), s.text
    assert [s.logprob for s in spans] == sorted((s.logprob for s in spans), reverse=True)


def test_exhaustive_search_finds_the_most_likely_span(model, tok):
    decoder = SpanDecoder(model, tok)
    prompt = tok.encode("When did it erupt? ")
    best = decoder.spans(prompt, [EVIDENCE], beams=16, max_tokens=64)[0]
    scored = {s: reference_logprob(model, tok, decoder, prompt, s) for s in word_spans(EVIDENCE)}
    winner = max(scored, key=scored.get)
    assert best.text == winner
    assert best.logprob == pytest.approx(scored[winner], abs=1e-3)


def test_the_answer_follows_the_models_preference(tok):
    """A model that greedily writes "1872" and then ends its turn gets "1872" out of the evidence."""
    prompt = tok.encode("Q? ")
    end = tok.encode("<|im_end|>")
    model = chain_model(tok, [prompt[-1], *tok.encode("1872"), *end])
    spans = SpanDecoder(model, tok).spans(prompt, [EVIDENCE], beams=4)
    assert spans[0].text == "1872"
    assert math.exp(spans[0].logprob) > 0.5


def test_a_shared_prompt_prefix_is_reused_without_changing_the_result(model, tok):
    shared = tok.encode("Evidence and instructions that every question starts with. ")
    first, second = shared + tok.encode("When?"), shared + tok.encode("Where?")
    warm = SpanDecoder(model, tok)
    warm.spans(first, [EVIDENCE])
    again = warm.spans(second, [EVIDENCE])
    assert warm._cached_ids == second
    fresh = SpanDecoder(model, tok).spans(second, [EVIDENCE])
    assert [s.text for s in again] == [s.text for s in fresh]
    assert [s.logprob for s in again] == pytest.approx([s.logprob for s in fresh], abs=1e-4)


def test_no_evidence_no_spans_and_an_overlong_prompt_is_refused(model, tok):
    decoder = SpanDecoder(model, tok)
    assert decoder.spans(tok.encode("Q"), ["", "   "]) == []
    with pytest.raises(ValueError, match="no room"):
        decoder.spans([5] * 250, [EVIDENCE], max_tokens=48)


def test_answers_end_after_words_or_before_their_punctuation_never_inside():
    text = "Denmark, Iceland and 1-5 um."
    ends = word_ends(text)
    assert {text.index(",") , text.index(",") + 1, text.index(" and"), len(text) - 1, len(text)} <= ends
    assert text.index("-") not in ends  # "1-5" does not end after "1"
    assert text.index("mark") not in ends


def test_suffix_trie_starts_at_every_word(tok):
    root = suffix_trie(tok, ["ab cd"])
    assert sorted(tok.decode([t]) for t in root.kids) == ["a", "c"]
