"""The summary eval: ROUGE (bot.eval.metrics) against the rouge-score package, the QMSum and folder readers
(bot.eval.datasets), the lead baselines, and the whole summary eval (bot.eval.summary) on a tiny folder with a
tiny random encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rouge_score.rouge_scorer import RougeScorer

from bot.config import DocumentSettings, Settings
from bot.eval import datasets, metrics
from bot.eval import summary as es
from tests.unit.test_encoder import write_model

# ------------------------------------------------------------------------------------------ ROUGE


def test_rouge_on_tiny_known_strings():
    pred, ref = "The cat sat on the mat.", "the cat lay on the mat"
    # unigrams: 5 of 6 shared both ways; bigrams: the-cat, on-the, the-mat = 3 of 5; LCS "the cat on the mat" = 5
    assert metrics.rouge_n(pred, ref, 1) == pytest.approx(5 / 6)
    assert metrics.rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    assert metrics.rouge_l(pred, ref) == pytest.approx(5 / 6)
    assert metrics.rouge("a b c d", "a b c d") == {"rouge1": 1.0, "rouge2": 1.0, "rougeLsum": 1.0}
    assert metrics.rouge("x y", "a b")["rougeLsum"] == 0.0
    assert metrics.rouge_l("", "a b") == 0.0
    # LCS keeps order: "a c" is common, "c a" is not
    assert metrics.lcs_length(list("abcde"), list("ace")) == 3
    assert metrics.lcs_length(list("ca"), list("ac")) == 1
    assert metrics.rouge_tokens("COVID-19's R0, 2.5", stem=False) == ["covid", "19", "s", "r0", "2", "5"]
    assert metrics.rouge_tokens("The players were running") == ["the", "player", "were", "run"]  # Porter, > 3 letters


CASES = [
    ("Police arrested two men after the robbery in Leeds on Tuesday.",
     "Two men have been arrested following a robbery at a shop in Leeds."),
    ("The council voted to close the libraries. Campaigners said they would appeal.",
     "Campaigners are to appeal against a council decision to close three libraries."),
    ("Scientists discovered a new species of frog in the rainforests of Peru in 2019.",
     "A new frog species has been found in Peru."),
    ("nothing in common here", "Completely different words altogether"),
]


@pytest.mark.parametrize("prediction, reference", CASES)
def test_our_rouge_equals_rouge_score_with_stemming(prediction, reference):
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ref = scorer.score(reference, prediction)
    assert metrics.rouge_n(prediction, reference, 1) == pytest.approx(ref["rouge1"].fmeasure)
    assert metrics.rouge_n(prediction, reference, 2) == pytest.approx(ref["rouge2"].fmeasure)
    assert metrics.rouge_l(prediction, reference) == pytest.approx(ref["rougeL"].fmeasure)


def test_rouge_lsum_scores_sentence_by_sentence():
    """rouge-score's Lsum needs one sentence a line; `rouge` puts them there, so the order of sentences
    matters less than for one LCS over the whole text."""
    prediction = "Campaigners said they would appeal. The council voted to close three libraries."
    reference = "The council voted to close three libraries. Campaigners said they would appeal."
    scorer = RougeScorer(["rougeLsum"], use_stemmer=True)
    on_lines = scorer.score(reference.replace(". ", ".\n"), prediction.replace(". ", ".\n"))["rougeLsum"].fmeasure
    assert metrics.rouge(prediction, reference)["rougeLsum"] == pytest.approx(on_lines) == pytest.approx(1.0)
    assert scorer.score(reference, prediction)["rougeLsum"].fmeasure < 0.7  # what one line would give


# ------------------------------------------------------------------------------------------ data sets


def test_lead_baselines():
    assert es.lead(["A: hello there", "B: general  kenobi now"], 4) == "A: hello there B:"
    assert es.lead_sentences("One. Two here. Three.", 2) == "One.\nTwo here."


def test_transcript_is_read_like_a_text_document():
    sections = es.transcript_sections(["Professor E: So. OK.", "Grad G: It  crashed."], Settings())
    assert sections == ["Professor E: So. OK.\nGrad G: It crashed."]


def test_load_qmsum_cleans_the_transcribers_markers(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    row = {"general_query_list": [{"query": "Summarize the whole meeting", "answer": "They met."}],
           "specific_query_list": [],
           "meeting_transcripts": [{"speaker": "A", "content": "So , it 's {disfmarker} it is n't done ."},
                                   {"speaker": "B", "content": "{vocalsound}"}]}
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    meetings = datasets.load_qmsum(path)
    assert len(meetings) == 2 and meetings[0]["reference"] == "They met."
    assert meetings[0]["transcript"] == ["A: So, it's it isn't done."]  # B said nothing but a marker
    assert meetings[0]["id"] != meetings[1]["id"]
    path.write_text('{"meeting_transcripts": []}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:1: not a QMSum line"):
        datasets.load_qmsum(path)


def write_folder(root: Path, docs: list[str], refs: list[str], systems: dict[str, list[str]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "documents.txt").write_text("\n".join(docs) + "\n")
    (root / "references.txt").write_text("\n".join(refs) + "\n")
    (root / "ids.txt").write_text("\n".join(f"doc{i}" for i in range(len(docs))) + "\n")
    for name, outputs in (systems or {}).items():
        (root / "summaries").mkdir(exist_ok=True)
        (root / "summaries" / f"{name}.summary").write_text("\n".join(outputs) + "\n")
    return root


def test_load_folder_reads_one_document_a_line(tmp_path: Path):
    root = write_folder(tmp_path / "set", ["It rained in Leeds.The match was off.", "A second document."],
                        ["No match.", "Second."], {"good": ["a", "b"], "misaligned": ["only one"]})
    items = datasets.load_folder(root)
    assert [i["id"] for i in items] == ["doc0", "doc1"]
    assert items[0]["document"] == "It rained in Leeds. The match was off."  # XSum's glued sentences parted
    assert items[1]["reference"] == "Second." and items[1]["systems"] == {"good": "b"}  # misaligned left out
    kind, loaded = datasets.load_summary_dataset(root)
    assert kind == "folder" and loaded == items
    assert datasets.unjoin_sentences("U.S. troops left.Then 3.5 km.Next") == "U.S. troops left. Then 3.5 km. Next"
    (root / "references.txt").write_text("only one\n")
    with pytest.raises(ValueError, match="2 documents but 1 references"):
        datasets.load_folder(root)
    with pytest.raises(FileNotFoundError, match="documents.txt"):
        datasets.load_folder(tmp_path)


# ------------------------------------------------------------------------------------------ the eval


def test_summary_eval_on_a_folder_scores_every_system(tmp_path: Path):
    docs = ["The council of Osterby voted on Monday to close three libraries in 2021. Campaigners from the "
            "town said they would appeal. The mayor, Anna Berg, said the budget left no choice.",
            "Mount Kelvara erupted in 1872 and covered the valley in ash. The eruption lasted eleven days. "
            "Seismometers are now read every ten minutes by the observatory."]
    refs = ["Osterby is to close three of its libraries.", "Mount Kelvara erupted in 1872."]
    invented = ["Berlin will close 40 libraries, said John Smith.", "Kelvara erupted in 1872."]
    root = write_folder(tmp_path / "set", docs, refs, {"inventor": invented})
    settings = Settings(data_dir=tmp_path / "data",
                        documents=DocumentSettings(encoder=str(write_model(tmp_path / "encoder"))))

    result = es.summary_eval(settings, root, show_progress=False, writing="extract")
    assert result["format"] == "folder" and result["documents"] == 2 and result["failed"] == 0
    assert set(result["systems"]) == {"summarize", "lead-1", "lead-3", "inventor"}
    ours = result["systems"]["summarize"]["all"]
    assert ours["n"] == 2 and ours["unsupported_rate"] == 0.0 and 0 < ours["rouge1"] <= 1
    # checked: "Berlin", "40", "John", "Smith", "Kelvara" and "1872" (a first word too: a writer can invent one
    # there); the first four are invented
    assert result["systems"]["inventor"]["all"]["unsupported_rate"] == pytest.approx(4 / 6)
    assert ours["coverage"] == 1.0 and result["sections_per_document"] == 1  # short: one section each
    assert result["written"] is False and result["model"] is None
    assert result["systems"]["lead-1"]["all"]["words"] == pytest.approx((13 + 11) / 2)
    halves = result["systems"]["summarize"]
    assert sum(halves[h]["n"] for h in ("tune", "test") if h in halves) == 2
    for row in result["examples"]:
        assert row["summary"] and all(line in docs[int(row["id"][3:])] for line in row["summary"].split("\n"))
