"""chunk_document / chunk_text with the real MiniLM tokenizer count and a plain whitespace count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bot.config import env_cache_dir
from bot.documents.chunk import (
    CHARS_PER_TOKEN,
    chunk_document,
    chunk_text,
    sentence_windows,
    split_sentences,
    token_counter,
)
from bot.documents.parse import ParsedDocument, Section, parse_document
from lm import hub
from tests.support import make_docs as md

COVIDQA = Path(__file__).resolve().parents[3] / "shared" / "eval" / "covidqa.json"  # ../shared beside the checkout


def words(text: str) -> int:
    return len(text.split())


def norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def minilm():
    tok = Tokenizer.from_file(str(hub.pull("minilm-l6", env_cache_dir()) / "tokenizer.json"))
    return token_counter(tok)


@pytest.fixture(scope="module")
def paper() -> str:
    data = json.loads(COVIDQA.read_text())
    return data["data"][0]["paragraphs"][0]["context"]


def numbered(n: int, length: int = 6) -> list[str]:
    """n distinct sentences of `length` words each."""
    return [f"Sentence number {i} has " + " ".join(["word"] * (length - 4)) + "." for i in range(n)]


# -- sentences


def test_sentence_splitter_handles_abbreviations_decimals_and_initials():
    text = (
        "Dr. Smith et al. (2020) showed e.g. that Fig. 2 is wrong. The dose was 3.5 mg, i.e. small. "
        "Was it? Yes! See Figs. 3 and 4 in Table 2. J. R. Tolkien wrote it... Then he stopped.\n"
        'This line wraps\nmid-sentence. "Quoted." Next one.\n\nNew paragraph without a period\n- a list item\n- another'
    )
    assert split_sentences(text) == [
        "Dr. Smith et al. (2020) showed e.g. that Fig. 2 is wrong.",
        "The dose was 3.5 mg, i.e. small.",
        "Was it?",
        "Yes!",
        "See Figs. 3 and 4 in Table 2.",
        "J. R. Tolkien wrote it...",
        "Then he stopped.",
        "This line wraps mid-sentence.",
        '"Quoted."',
        "Next one.",
        "New paragraph without a period",
        "- a list item",
        "- another",
    ]


# -- packing


def test_sentence_windows_slide_one_sentence_at_a_time():
    text = "One is here. Two is there. Three, e.g. this one, is last.\nFour ends it."
    assert sentence_windows(text, 2) == ["One is here. Two is there.", "Two is there. Three, e.g. this one, is last.",
                                         "Three, e.g. this one, is last. Four ends it."]
    assert sentence_windows(text, 1) == split_sentences(text)
    assert sentence_windows("Only one sentence.", 3) == ["Only one sentence."]
    assert sentence_windows("   ", 2) == []
    with pytest.raises(ValueError):
        sentence_windows(text, 0)


def test_chunks_pack_whole_sentences_with_overlap():
    sentences = numbered(30)  # 6 words each
    chunks = chunk_text(" ".join(sentences), words, max_tokens=20, overlap_tokens=7)
    assert len(chunks) > 5
    for c in chunks:
        assert c.token_count == words(c.text) <= 20
        assert any(c.text.startswith(s) for s in sentences) and any(c.text.endswith(s) for s in sentences)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.text.startswith(prev.text.split(". ")[-1])  # the last sentence is carried over
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_no_overlap_when_asked_and_every_sentence_appears_once():
    sentences = numbered(25)
    chunks = chunk_text(" ".join(sentences), words, max_tokens=20, overlap_tokens=0)
    assert " ".join(c.text for c in chunks) == " ".join(sentences)


def test_over_long_sentence_is_split_at_word_boundaries(minilm):
    long = "The " + " ".join(f"protein{i} binds receptor{i}" for i in range(120)) + " in cells."
    chunks = chunk_text("Short one. " + long + " Short two.", minilm, max_tokens=60, overlap_tokens=10)
    assert all(c.token_count == minilm(c.text) <= 60 for c in chunks)
    body = [c.text for c in chunks if c.text not in ("Short one.", "Short two.")]
    assert norm(" ".join(body)).count("protein119 binds receptor119") == 1
    all_words = " ".join(c.text for c in chunks).split()
    assert set(long.split()) <= set(all_words)  # no word was cut in half


def test_a_giant_word_is_cut_to_fit(minilm):
    blob = "QUJD" * 600  # like a base64 string
    chunks = chunk_text(f"Data: {blob} end.", minilm, max_tokens=50, overlap_tokens=0)
    assert all(c.token_count <= 50 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == f"Data:{blob}end."


@pytest.mark.timeout(90)
@pytest.mark.parametrize("run, size", [("*_", 2**20), ("x", 2**20), ('{"id":17,"tags":["a","b"],"v":-0.5},', 2**18)],
                         ids=["punctuation", "one-letter", "minified-json"])
def test_a_megabyte_without_spaces_is_chunked_within_both_bounds_in_linear_time(minilm, run, size):
    """Each character of "*_" is a token; a run of "x" is one token per word however long (WordPiece gives up
    after 100 characters), so only the character bound keeps its chunks small."""
    text = (run * (size // len(run) + 1))[:size]
    seen: list[int] = []

    def counting(s: str) -> int:
        seen.append(len(s))
        return minilm(s)

    chunks = chunk_text(text, counting, max_tokens=254, overlap_tokens=64)
    max_chars = CHARS_PER_TOKEN * 254
    assert all(c.token_count == minilm(c.text) <= 254 and 0 < len(c.text) <= max_chars for c in chunks)
    assert "".join(c.text for c in chunks) == text  # every character kept, in order, none repeated
    assert max(seen) <= max_chars  # the tokenizer never sees more than a bounded string ...
    assert sum(seen) < 8 * len(text)  # ... and each character only a few times


def test_a_huge_word_between_sentences_is_cut_at_the_character_bound(minilm):
    text = "It starts here. " + "x" * 50_000 + " It ends here."
    chunks = chunk_text(text, minilm, max_tokens=100, overlap_tokens=10, max_chars=500)
    assert all(len(c.text) <= 500 and c.token_count <= 100 for c in chunks)
    assert chunks[0].text == "It starts here." and chunks[-1].text.endswith("It ends here.")
    assert "".join(c.text for c in chunks).replace(" ", "").replace(".", "").count("x") == 50_000


def test_token_limit_holds_even_when_the_count_is_not_additive():
    # Counting characters: joining two sentences adds a space, so sums of parts undercount.
    chunks = chunk_text(" ".join(numbered(40)), len, max_tokens=120, overlap_tokens=30)
    assert all(len(c.text) <= 120 and c.token_count == len(c.text) for c in chunks)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        chunk_text("Some text.", words, max_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError):
        chunk_text("Some text.", words, max_tokens=0, overlap_tokens=0)


# -- pages, headings, sections


def test_pages_and_headings_are_carried_and_chunks_stay_inside_a_section():
    page1, page2 = " ".join(numbered(10)), " ".join(numbered(9, length=7))
    doc = ParsedDocument("d.pdf", "pdf", [Section(page1, 1, "Intro"), Section(page2, 2, "Results")], 2, "")
    chunks = chunk_document(doc, words, max_tokens=25, overlap_tokens=6)
    assert {c.page for c in chunks} == {1, 2}
    for c in chunks:
        home = page1 if c.page == 1 else page2
        assert c.text in home  # never spans two pages
        assert c.heading == ("Intro" if c.page == 1 else "Results")


def test_tiny_sections_merge_into_the_next_keeping_the_first_page():
    body = " ".join(numbered(8))
    doc = ParsedDocument(
        "d.pdf",
        "pdf",
        [Section("Chapter two.", 3, "Two"), Section(body, 4, "Two"), Section("The end.", 5)],
        5,
        "",
    )
    chunks = chunk_document(doc, words, max_tokens=200, overlap_tokens=20)
    assert len(chunks) == 1
    assert chunks[0].page == 3 and chunks[0].heading == "Two"
    assert chunks[0].text.startswith("Chapter two.") and chunks[0].text.endswith("The end.")


def test_parsed_markdown_chunks_carry_their_headings():
    doc = parse_document(md.MARKDOWN.encode(), "bread.md")
    chunks = chunk_document(doc, words, max_tokens=40, overlap_tokens=5, min_section_tokens=1)
    assert [(c.heading, c.text) for c in chunks] == [
        ("Bread baking", "Bread needs flour, water, salt and yeast."),
        ("Kneading", "Knead for ten minutes until smooth. Use 300 g of water.\ncode block kept as text"),
        ("Proofing", "Let the dough rise for an hour."),
    ]


# -- a real paper, real tokenizer


def test_covidqa_paper_chunks_fit_the_encoder_and_cover_every_sentence(minilm, paper):
    max_tokens = 254  # 256-token window minus [CLS] and [SEP]
    chunks = chunk_text(paper, minilm, max_tokens=max_tokens, overlap_tokens=40)
    assert len(chunks) > 10
    assert all(c.token_count == minilm(c.text) <= max_tokens for c in chunks)

    # The chunks tile the paper in order: each is a piece of it, no gaps between them.
    doc, covered, start = norm(paper), 0, 0
    for c in chunks:
        at = doc.find(norm(c.text), start)
        assert at >= 0 and at <= covered + 1, f"gap before chunk {c.ordinal}"
        covered, start = max(covered, at + len(norm(c.text))), at + 1
    assert covered == len(doc)

    # Every sentence that fits the window sits whole inside some chunk.
    texts = [norm(c.text) for c in chunks]
    for sentence in split_sentences(paper):
        if minilm(sentence) <= max_tokens:
            assert any(sentence in t for t in texts), sentence[:80]

    # Most consecutive chunks overlap: the next one opens with a sentence that closed the previous one
    # (not all: a closing sentence over 40 tokens is not carried).
    pairs = list(zip(texts, texts[1:], strict=False))
    overlapping = sum(split_sentences(b)[0] in a for a, b in pairs)
    assert overlapping >= len(pairs) // 2


def test_minilm_counter_is_not_truncated_at_128(minilm):
    assert minilm("word " * 300) == 300
