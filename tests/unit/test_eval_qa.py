"""bot.eval.qa: the loop detector (bot.eval.metrics), the figures, and (integration) the whole qa eval through the
product's answer pipeline with MiniLM and a tiny random chat model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import DocumentSettings, Settings
from bot.eval import metrics
from bot.eval import qa as eval_qa
from tests.unit.test_evaluate import PAPERS, squad


def test_loops_finds_a_line_or_eight_words_said_three_times():
    assert metrics.loops("1. Obtain a copy of the program.\n" * 3)
    assert metrics.loops(" ".join(["the duke of normandy ruled the land well"] * 3))
    assert not metrics.loops("1. Obtain a copy of the program.\n" * 2)
    assert not metrics.loops("The Normans came from Normandy. The Normans were Vikings. The Normans won.")


def test_figures_split_answerable_and_unanswerable_questions():
    rows = [
        {"answerable": True, "contains": True, "right": True, "words": 4, "f1": 1.0, "quote_contains": True,
         "in_evidence": True, "in_passages": True, "not_found": False, "unsupported": False, "loops": False,
         "seconds": 1.0, "path": "model", "rejected": ""},
        {"answerable": True, "contains": False, "right": False, "words": 0, "f1": 0.0, "quote_contains": True,
         "in_evidence": True, "in_passages": True, "not_found": True, "unsupported": False, "loops": False,
         "seconds": 3.0, "path": "", "rejected": "terms"},
        {"answerable": False, "not_found": True, "words": 0, "unsupported": False, "loops": False, "seconds": 2.0},
        {"answerable": False, "not_found": False, "words": 8, "unsupported": True, "loops": True, "seconds": 2.0,
         "path": "copy", "rejected": "asked"},
    ]
    f = eval_qa.figures(rows)
    assert (f["answerable"], f["unanswerable"]) == (2, 2)
    assert f["contains_gold"] == 0.5 and f["answerable_not_found"] == 0.5 and f["quote_contains_gold"] == 1.0
    assert f["unanswerable_not_found"] == 0.5
    assert f["unsupported_rate"] == 0.5  # of the two replies that gave an answer
    assert f["loops"] == 1 and f["seconds_per_question"] == 2.0
    assert f["right"] == 0.5 and f["answer_words"] == 6.0  # words: of the two answers given
    assert f["written_rejected"] == 0.5 and f["paths"] == {"model": 1, "copy": 1, "not found": 2}
    assert eval_qa.figures(rows[:2])["unanswerable_not_found"] is None


@pytest.mark.integration
async def test_qa_eval_runs_the_answer_pipeline_end_to_end(tmp_path: Path):
    """A random model's answers are still copied from the evidence (never unsupported, never looping), and a
    question about a name the papers never mention is answered "not found", whatever the model prefers."""
    from bot.config import env_cache_dir
    from lm import hub
    from tests.support.tiny_gguf import write_tiny_gguf

    data = squad(PAPERS)
    data["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "x-1", "question": "How long was the incubation period of the Qarlax virus?", "answers": [],
         "is_impossible": True, "plausible_answers": [{"text": "four days on average", "answer_start": 0}]})
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir())), chunk_tokens=24, chunk_overlap_tokens=4)
    settings = Settings(data_dir=tmp_path / "data", documents=docs)
    settings.model.name = str(write_tiny_gguf(tmp_path / "tiny.gguf", max_seq_len=2048).path)

    result = await eval_qa.qa_eval(settings, path, limit=4, seed=1, show_progress=False)
    every = result["halves"]["all"]
    assert (every["answerable"], every["unanswerable"]) == (4, 1) and len(result["examples"]) == 5
    assert every["gold_in_evidence"] == 1.0 and every["gold_in_passages"] == 1.0
    assert every["unsupported_rate"] == 0.0 and every["loops"] == 0
    assert every["unanswerable_not_found"] == 1.0
    for row in result["examples"]:
        if not row["not_found"]:
            assert "\n\nSource: tiny-" in row["reply"] and row["answer"] in row["reply"]
    halves = result["halves"]
    assert halves["tune"]["answerable"] + halves["test"]["answerable"] == 4
    assert result["writing"] == "copy" and {r["path"] for r in result["examples"]} <= {"copy", ""}  # the tiny model

    # made to write, the random model's words fail the support check: never shown, nor replaced by a copied span
    written = await eval_qa.qa_eval(settings, path, limit=2, seed=1, show_progress=False, writing="model")
    assert written["writing"] == "model" and written["halves"]["all"]["unsupported_rate"] == 0.0
    for row in written["examples"]:
        assert row["path"] != "model" or row["answer"] == row["written"]
        if row["rejected"]:
            assert row["path"] == "" and row["not_found"] and not row["reply"].startswith(row["written"])

    # one half only: its questions, the other half empty
    tune = await eval_qa.qa_eval(settings, path, limit=4, seed=1, show_progress=False, half=0)
    assert tune["halves"]["test"]["answerable"] + tune["halves"]["test"]["unanswerable"] == 0
    assert tune["halves"]["tune"]["answerable"] == halves["tune"]["answerable"]
