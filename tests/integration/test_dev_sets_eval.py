"""`docent eval qa` on a folder of real files and `docent eval chat`, end to end through the product's own paths
with MiniLM and a tiny random chat model: the plumbing, not the quality (the figures come from real models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import DocumentSettings, Settings

pytestmark = pytest.mark.integration

HTML = b"""<html><head><title>Groups</title></head><body><h1>Groups</h1>
<p>The operator user account was used to dump filesystem backups to tape. It had uid 37.</p>
<p>Members of group dialout have full and direct access to serial ports.</p></body></html>"""
MARKDOWN = b"# Ranges\n\nUIDs for dynamic users are allocated from the range 61184 to 65519.\n"


def _settings(tmp_path: Path) -> Settings:
    from bot.config import env_cache_dir
    from lm import hub
    from tests.support.tiny_gguf import write_tiny_gguf

    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir())), chunk_tokens=32,
                            chunk_overlap_tokens=4)
    settings = Settings(data_dir=tmp_path / "data", documents=docs)
    settings.model.name = str(write_tiny_gguf(tmp_path / "tiny.gguf", max_seq_len=2048).path)
    return settings


async def test_qa_eval_uploads_a_folders_files_through_the_parser_and_keeps_their_split(tmp_path: Path):
    from bot.eval.qa import qa_eval

    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "groups.html").write_bytes(HTML)
    (folder / "ranges.md").write_bytes(MARKDOWN)
    (folder / "questions.json").write_text(json.dumps({"questions": [
        {"id": "g1", "document": "groups.html", "kind": "number", "question": "What uid did the operator have?",
         "answers": ["37"], "split": "tune"},
        {"id": "r1", "document": "ranges.md", "kind": "number", "question": "From which range are dynamic users "
         "allocated?", "answers": ["61184"], "split": "held-out"},
        {"id": "u1", "document": "groups.html", "kind": "number", "question": "What gid does the audio group have?",
         "answerable": False, "split": "held-out"}]}))

    result = await qa_eval(_settings(tmp_path), folder, limit=None, show_progress=False)
    rows = {r["qid"]: r for r in result["examples"]}
    assert set(rows) == {"g1", "r1", "u1"}
    assert (rows["g1"]["half"], rows["r1"]["half"], rows["u1"]["half"]) == (0, 1, 1)  # the recorded split
    assert rows["g1"]["in_passages"] and rows["r1"]["in_passages"]  # the HTML and Markdown were parsed and found
    assert "<p>" not in " ".join(rows["g1"]["reply"].split())  # text, not markup
    for r in (rows["g1"], rows["r1"]):
        assert r["right"] == (r["contains"] and r["words"] <= 50) and r["kind"] == "number"
    halves = result["halves"]
    assert (halves["tune"]["answerable"], halves["test"]["answerable"], halves["test"]["unanswerable"]) == (1, 1, 1)


def test_chat_eval_replies_turn_by_turn_within_the_token_cap(tmp_path: Path):
    from bot.eval.chat_quality import chat_eval

    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"max_words": 60, "max_new_tokens": 12, "refusal_markers": ["don't know"],
                                "items": [
        {"id": "f1", "kind": "fact", "turns": ["Who wrote Pride and Prejudice?"], "answers": ["Austen"]},
        {"id": "m1", "kind": "multi_turn", "turns": ["I have three cats.", "How many cats do I have?"],
         "answers": ["three", "3"], "split": "held-out"},
        {"id": "r1", "kind": "refuse", "turns": ["What did I eat this morning?"]}]}))

    result = chat_eval(_settings(tmp_path), path, show_progress=False)
    rows = {r["id"]: r for r in result["examples"]}
    assert [len(rows[i]["replies"]) for i in ("f1", "m1", "r1")] == [1, 2, 1]
    assert all(r["tokens"] <= 12 * len(r["turns"]) for r in rows.values())  # the cap holds on every turn
    assert sum(r["tokens"] for r in rows.values()) > 0 and any(r["capped"] for r in rows.values())
    assert result["max_new_tokens"] == 12 and result["halves"]["all"]["n"] == 3
    assert (result["halves"]["tune"]["n"], result["halves"]["test"]["n"]) == (2, 1)
    assert set(result["kinds"]) == {"fact", "multi_turn", "refuse"}
