"""The dev set of real documents (tests/data/realdocs): its gold answers are in the documents as our parser
reads them, it meets issue 24's minimums, and its loader rejects a broken set with a clear message."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bot.documents.parse import parse_document
from bot.eval import datasets, realdocs
from bot.eval.metrics import normalize_span

REALDOCS = Path(__file__).resolve().parents[1] / "data" / "realdocs"


@pytest.fixture(scope="module")
def parsed() -> dict:
    """Every document of the set, parsed by the product's own parser: {file name: ParsedDocument}."""
    return {p.name: parse_document(p, p.name) for p in sorted(REALDOCS.iterdir())
            if p.name not in ("README.md", realdocs.QUESTIONS_FILE)}


def test_every_gold_answer_is_in_its_documents_parsed_text(parsed):
    papers = datasets.load_qa(REALDOCS)
    texts = {name: normalize_span(doc.text) for name, doc in parsed.items()}
    missing = [(q.qid, a) for p in papers for q in p.questions for a in q.answers
               if normalize_span(a) not in texts[p.name]]
    assert missing == []
    assert all(not q.answers for p in papers for q in p.unanswerable)


def test_the_set_meets_the_issues_minimums(parsed):
    papers = datasets.load_qa(REALDOCS)
    answerable = [q for p in papers for q in p.questions]
    unanswerable = [q for p in papers for q in p.unanswerable]
    assert len(answerable) >= 60 and len(unanswerable) >= 20
    assert {p.name for p in papers} == set(parsed)  # every document is asked about, and none is missing
    kinds = Counter(doc.kind for doc in parsed.values())
    assert {"pdf", "html", "markdown", "text"} <= set(kinds) and len(parsed) >= 6
    assert max(doc.pages or 0 for doc in parsed.values()) >= 15  # a real manual, not a leaflet
    assert {"fact", "number", "why", "procedure", "obligation", "list"} <= {q.kind for q in answerable}
    for group in (answerable, unanswerable):  # both halves hold both kinds of question, about even
        halves = Counter(datasets.question_half(q, seed=0) for q in group)
        assert abs(halves[0] - halves[1]) <= 1
    assert sum(p.stat().st_size for p in REALDOCS.iterdir()) < 3 * 2**20


def test_the_readme_records_every_documents_source_and_licence(parsed):
    readme = (REALDOCS / "README.md").read_text()
    for name in parsed:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}`")), "")
        assert "/usr/share/" in row and row.count("|") >= 6, name


def _write_set(folder: Path, questions: list[dict]) -> Path:
    folder.mkdir()
    (folder / "a.txt").write_text("The answer is forty-two.")
    (folder / "questions.json").write_text(json.dumps({"questions": questions}))
    return folder


def test_the_loader_reads_a_set_and_keeps_its_split(tmp_path):
    folder = _write_set(tmp_path / "set", [
        {"id": "a1", "document": "a.txt", "question": "What is the answer?", "answers": ["forty-two"],
         "kind": "number", "split": "held-out"},
        {"id": "u1", "document": "a.txt", "question": "Who asked?", "answerable": False, "split": "tune"}])
    (paper,) = datasets.load_qa(folder)
    assert paper.path == folder / "a.txt" and paper.name == "a.txt"
    assert [q.qid for q in paper.questions] == ["a1"] and [q.qid for q in paper.unanswerable] == ["u1"]
    assert datasets.question_half(paper.questions[0], seed=0) == 1
    assert datasets.question_half(paper.unanswerable[0], seed=0) == 0


@pytest.mark.parametrize("question, message", [
    ({"id": "a1", "document": "missing.txt", "question": "Q?", "answers": ["x"]}, "missing.txt"),
    ({"id": "a1", "document": "a.txt", "question": "Q?", "answers": []}, "at least one gold answer"),
    ({"id": "a1", "document": "a.txt", "question": "Q?", "answers": ["x"], "split": "train"}, "split must be"),
    ({"document": "a.txt", "question": "Q?"}, "needs id"),
])
def test_the_loader_names_what_is_wrong_with_a_set(tmp_path, question, message):
    folder = _write_set(tmp_path / "set", [question])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        datasets.load_qa(folder)


def test_the_eval_store_key_follows_the_documents_not_the_questions(tmp_path):
    folder = _write_set(tmp_path / "set", [{"id": "a1", "document": "a.txt", "question": "Q?", "answers": ["x"]}])
    key = realdocs.content_key(folder)
    (folder / "questions.json").write_text(json.dumps({"questions": []}))
    (folder / "README.md").write_text("notes")
    assert realdocs.content_key(folder) == key
    (folder / "a.txt").write_text("The answer is forty-three.")
    assert realdocs.content_key(folder) != key


def test_repeated_ids_are_refused(tmp_path):
    q = {"id": "a1", "document": "a.txt", "question": "Q?", "answers": ["forty-two"]}
    with pytest.raises(ValueError, match="repeat"):
        datasets.load_qa(_write_set(tmp_path / "set", [q, q]))


# ------------------------------------------------------------------------------------ the chat set


def test_the_chat_set_loads_with_every_kind_and_both_halves():
    from bot.eval import chat_quality

    items, options = chat_quality.load_chat_set()
    assert len(items) >= 45 and options["max_new_tokens"] >= 32 and options["max_words"] >= 20
    kinds = Counter(it.kind for it in items)
    assert set(kinds) == set(chat_quality.KINDS) and min(kinds.values()) >= 5
    assert all(len(it.turns) >= 2 for it in items if it.kind == "multi_turn")
    assert {it.split for it in items} == {"tune", "held-out"}


def test_a_right_reply_scores_right_and_a_wrong_long_or_invented_one_does_not():
    from bot.eval import chat_quality

    items = {it.iid: it for it in chat_quality.load_chat_set()[0]}
    austen = next(it for it in items.values() if "Pride and Prejudice" in it.turns[-1])
    assert chat_quality.score_reply(austen, "Pride and Prejudice was written by Jane Austen.")["right"]
    assert not chat_quality.score_reply(austen, "Charlotte Brontë wrote it in 1847.")["mentions"]
    rambling = "Jane Austen wrote it. " + "She also wrote many other books about society and manners. " * 10
    long = chat_quality.score_reply(austen, rambling)
    assert long["mentions"] and not long["right"] and long["words"] > austen.max_words
    sums = next(it for it in items.values() if it.turns == ["What is 17 + 25?"])
    assert chat_quality.score_reply(sums, "17 + 25 = 42.")["right"]
    assert not chat_quality.score_reply(sums, "17 + 25 = 43.")["right"]
    boiling = next(it for it in items.values() if "boil" in it.turns[-1])
    assert chat_quality.score_reply(boiling, "The boiling point of water is 100°C (212°F).")["right"]
    assert not chat_quality.score_reply(boiling, "It boils at 1000 degrees.")["mentions"]  # whole words only
    assert chat_quality.mentions_gold("It leaves at 9:30 am.", ["9:30"]) and not chat_quality.mentions_gold("At 19:30.", ["9:30"])
    breakfast = next(it for it in items.values() if it.kind == "refuse" and "breakfast" in it.turns[0])
    assert chat_quality.score_reply(breakfast, "I’m sorry, but I don't know what you ate this morning.")["right"]
    assert not chat_quality.score_reply(breakfast, "You had eggs and toast with orange juice.")["right"]
    invented_quote = 'The third sentence was: "I\'m sorry for any inconvenience."'  # an apology is no refusal
    assert not chat_quality.score_reply(breakfast, invented_quote)["right"]


def test_a_broken_chat_set_is_refused_with_a_message_naming_the_item(tmp_path):
    from bot.eval import chat_quality

    bad = tmp_path / "chat.json"
    bad.write_text(json.dumps({"items": [{"id": "x", "kind": "fact", "turns": ["Hi?"], "answers": []}]}))
    with pytest.raises(ValueError, match=r"x\): an item needs at least one gold answer"):
        chat_quality.load_chat_set(bad)
    bad.write_text(json.dumps({"items": [{"id": "x", "kind": "gossip", "turns": ["Hi?"], "answers": ["a"]}]}))
    with pytest.raises(ValueError, match="kind must be one of"):
        chat_quality.load_chat_set(bad)
    with pytest.raises(FileNotFoundError, match="chat set not found"):
        chat_quality.load_chat_set(tmp_path / "missing.json")
