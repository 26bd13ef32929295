"""bot.services.answer: which passages an answer used, the sources and the quote shown under it, the
follow-up query, the relevance filter and the prompt budget."""

from __future__ import annotations

from bot.services import answer
from bot.services.knowledge import Passage


def passage(i: int, text: str, score: float, evidence: str = "", page: int | None = None) -> Passage:
    return Passage(i, f"doc{i}.pdf", page, None, text, score, dense=0.5, evidence=evidence)


A = passage(1, "Ferrets were infected. The incubation period was four days.", 2.0,
            "Ferrets were infected. The incubation period was four days.", page=3)
B = passage(2, "Masks were worn by most nurses in the survey.", 1.5, "Masks were worn by most nurses in the survey.")


def test_cited_passages_prefers_markers_then_shared_words():
    assert answer.cited_passages("It was four days [2].", [A, B]) == [B]
    assert answer.cited_passages("the incubation period was four days", [B, A]) == [A]
    assert answer.cited_passages("no overlap at all here", [B, A]) == [B]  # nothing shared: the best one


def test_sources_note_lists_the_cited_sources_then_quotes_the_best_of_them():
    note = answer.sources_note("The incubation period was four days [1].", [A, B])
    assert note == ("Sources:\n• doc1.pdf, p. 3\n"
                    "Closest passage (doc1.pdf, p. 3): “Ferrets were infected. The incubation period was four days.”")
    only_b = answer.sources_note("Masks were worn by most nurses [2].", [A, B])
    assert only_b == "Sources:\n• doc2.pdf\nClosest passage (doc2.pdf): “Masks were worn by most nurses in the survey.”"
    both = answer.sources_note("See [1] and [2].", [B, A])
    assert both.count("•") == 2 and both.endswith("“Ferrets were infected. The incubation period was four days.”")


def test_quote_is_cut_at_a_word_and_absent_without_evidence():
    long = passage(3, "x", 1.0, evidence="word " * 200)
    quote = answer.format_quote([long], limit=50)
    assert quote.endswith("…”") and len(quote) < 50 + len("Closest passage (doc3.pdf): “”")
    assert answer.format_quote([passage(4, "text", 1.0)]) == ""


def test_follow_up_questions_carry_the_previous_one():
    assert answer.retrieval_query("and the second one?", ["What vaccines were tested?"]) == \
        "and the second one? What vaccines were tested?"
    long = "Which vaccines against influenza were tested in ferrets during the 2009 pandemic?"
    assert answer.retrieval_query(long, ["earlier"]) == long


def test_relevant_keeps_passages_about_the_question():
    far = Passage(5, "d.txt", None, None, "Completely different matter entirely.", 1.0, dense=0.1)
    close = Passage(6, "d.txt", None, None, "Nothing shared.", 1.0, dense=0.6)
    words = Passage(7, "d.txt", None, None, "The incubation period of ferrets.", 1.0, dense=0.1)
    assert answer.relevant([far, close, words], "incubation period ferrets?") == [close, words]


def test_prompt_budget_reserves_reply_room_capped_at_a_quarter():
    assert answer.prompt_budget(2048, 160) == 2048 - 160 - 64
    assert answer.prompt_budget(2048, 4096) == 2048 - 512 - 64
