"""bot.eval: the retrieval and answer metrics on hand-made cases, the seeded split and sample, the SQuAD
reader, the hybrid ranking settings, and (integration) a tiny retrieval eval through the real KnowledgeBase
and MiniLM. The summary eval's tests are in test_eval_summary.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from bot.config import DocumentSettings, Settings
from bot.db.tables import Chunk
from bot.documents.chunk import sentence_windows
from bot.eval import datasets, metrics, retrieval
from bot.services import open_services
from bot.services.knowledge import closest_window
from lm.rank import hybrid_scores, proximity, rank, window_cosines, word_idf

# ---------------------------------------------------------------------------------------- ranking


def test_ranking_metrics_on_a_known_ranking():
    ranks = [1, 3, None, 6, 20]
    m = metrics.ranking_metrics(ranks)
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(2 / 5)
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 20) / 5)
    assert m["n"] == 5
    assert metrics.ranking_metrics([])["recall@5"] == 0.0


def test_first_hit_ignores_case_and_whitespace():
    texts = ["Nothing to see here.", "The basic\n reproduction   NUMBER was 2.2 in Wuhan.", "basic reproduction number"]
    assert metrics.first_hit(texts, ["basic reproduction number"]) == 2
    assert metrics.first_hit(texts, ["absent span", "  nothing TO see "]) == 1
    assert metrics.first_hit(texts, ["incubation period"]) is None
    assert metrics.first_hit(texts, [" ", ""]) is None  # an empty answer never matches everything


def test_split_figures_reports_both_halves_and_all():
    figures = metrics.split_figures([1, None, 2, 7], [0, 0, 1, 1])
    assert figures["tune"]["recall@1"] == 0.5 and figures["tune"]["n"] == 2
    assert figures["test"]["recall@5"] == 0.5 and figures["test"]["recall@20"] == 1.0
    assert figures["all"]["n"] == 4 and figures["all"]["recall@5"] == 0.5


def test_half_split_is_stable_balanced_and_seeded():
    keys = [str(i) for i in range(2000)]
    first = [datasets.half_of(k, 7) for k in keys]
    assert first == [datasets.half_of(k, 7) for k in keys]  # the same split on every run
    assert set(first) == {0, 1}
    assert 0.45 < sum(first) / len(first) < 0.55
    other = [datasets.half_of(k, 8) for k in keys]
    assert 0.4 < sum(a != b for a, b in zip(first, other, strict=True)) / len(keys) < 0.6  # another seed, another split


def test_sample_is_seeded_and_keeps_order():
    items = list(range(100))
    a = datasets.sample(items, 10, seed=1)
    assert a == datasets.sample(items, 10, seed=1) and a == sorted(a) and len(a) == 10
    assert a != datasets.sample(items, 10, seed=2)
    assert datasets.sample(items, None, 0) == items and datasets.sample(items, 500, 0) == items
    with pytest.raises(ValueError, match="--limit"):
        datasets.sample(items, 0, 0)


# ------------------------------------------------------------------------------------------ SQuAD


def test_squad_normalisation_and_f1():
    assert metrics.squad_normalize("The Cat, sat!  on a mat.") == "cat sat on mat"
    assert metrics.right("61184...65519", ["61184…65519"])  # an ellipsis typed as three dots
    # prediction tokens: cat sat on mat; gold: cat sat -> precision 2/4, recall 2/2
    assert metrics.token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.token_f1("dog", "cat") == 0.0
    assert metrics.token_f1("The cat.", "cat") == 1.0
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("", "cat") == 0.0
    assert metrics.contains_answer("R0 was about 2.2, they said.", ["2.2"])
    assert not metrics.contains_answer("R0 was about 2.5, they said.", ["2.2"])
    assert metrics.contains_answer("The Incubation period is 5 days", ["incubation period is 5 days."])
    assert not metrics.contains_answer("incubation periods", ["incubation period"])  # whole words only


# ------------------------------------------------------------------------------------------ data sets


def test_load_squad_reads_papers_and_rejects_bad_files(tmp_path: Path):
    path = tmp_path / "mini.json"
    path.write_text(json.dumps({"data": [
        {"paragraphs": [{"context": "Alpha text.", "document_id": 5, "qas": [
            {"id": 1, "question": "q1?", "answers": [{"text": "Alpha", "answer_start": 0}]},
            {"id": 2, "question": "q2?", "answers": [], "is_impossible": True,
             "plausible_answers": [{"text": "text", "answer_start": 6}]}]}]},
    ]}))
    (paper,) = datasets.load_squad(path)
    assert paper.name == "mini-000-5.txt" and paper.text == "Alpha text."
    assert [(q.qid, q.answers, q.paper) for q in paper.questions] == [("1", ["Alpha"], "mini-000-5.txt")]
    assert [(q.qid, q.answers, q.answerable) for q in paper.unanswerable] == [("2", ["text"], False)]
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a SQuAD-format JSON"):
        datasets.load_squad(bad)
    bad.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')
    with pytest.raises(ValueError, match=r"data\[0\]"):
        datasets.load_squad(bad)
    with pytest.raises(FileNotFoundError, match="data set not found"):
        datasets.load_squad(tmp_path / "missing.json")


# --------------------------------------------------------------------------- hybrid ranking settings


def test_rank_baseline_modes(tmp_path: Path):
    from lm.index import HybridIndex

    rng = np.random.default_rng(0)
    idx = HybridIndex(tmp_path / "idx", 8)
    texts = ["zebra stripes pattern", "zebra crossing road", "lion mane", "tiger stripes", "elephant trunk"]
    vecs = rng.normal(size=(5, 8)).astype(np.float32)
    idx.add([1, 2, 3, 4, 5], vecs, texts)
    q = vecs[2] + 0.01  # dense points at the lion; the words point at the zebras
    bm25 = [i for i, _ in rank(idx, q, "zebra stripes", 5, "bm25")]
    assert bm25[0] == 1 and set(bm25) == {1, 2, 4}
    assert rank(idx, q, "zebra stripes", 5, "dense")[0][0] == 3
    assert {i for i, _ in rank(idx, q, "zebra stripes", 5, "rrf")} == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="search mode must be one of"):
        rank(idx, q, "zebra", 3, "hybrid")  # the product's mode needs the SQL side: KnowledgeBase.search


def test_proximity_rewards_the_question_words_together():
    idf = {"incubation": 2.0, "period": 1.0, "ferret": 3.0, "day": 0.5, "other": 0.1}
    query = ["incubation", "period", "ferret"]
    together = ["other", "incubation", "period", "ferret", "day"]
    apart = ["incubation", *["other"] * 20, "period", *["other"] * 20, "ferret"]
    w_together, p_together = proximity(query, together, idf, window=4)
    w_apart, p_apart = proximity(query, apart, idf, window=4)
    assert w_together == pytest.approx(1.0) and w_apart == pytest.approx(3 / 6)  # the best window holds "ferret"
    # pairs (incubation, period) and (period, ferret) both occur: (2+1 + 1+3) / (2 * 6)
    assert p_together == pytest.approx(7 / 12) and p_apart == 0.0
    assert proximity(["unknown"], together, idf, 4) == (0.0, 0.0)


def test_hybrid_scores_fuse_then_rerank():
    idf = {"zebra": 2.0, "stripe": 2.0, "other": 0.1}
    texts = {1: "zebra other other other other other other other other other other other other other stripes",
             2: "zebra stripes", 3: "a lion"}
    bm25 = {1: 4.0, 2: 4.0}
    cosine = {1: 0.1, 2: 0.1, 3: 0.9}
    window = {1: 0.1, 2: 0.1, 3: 0.9}
    words_only = DocumentSettings(dense_weight=0.0, window_weight=0.0, proximity_weight=0.0, phrase_weight=0.0)
    s = hybrid_scores("zebra stripes", cosine, window, bm25, texts, idf, words_only)
    assert s[1] == s[2] == 1.0 and s[3] == 0.0
    s = hybrid_scores("zebra stripes", cosine, window, bm25, texts, idf, DocumentSettings(dense_weight=0.0,
                                                                                         window_weight=0.0))
    assert s[2] > s[1]  # the same words, but together
    s = hybrid_scores("zebra stripes", cosine, window, bm25, texts, idf, DocumentSettings(dense_weight=10.0))
    assert max(s, key=s.get) == 3
    s = hybrid_scores("zebra stripes", cosine, window, bm25, texts, idf,
                      DocumentSettings(rerank_depth=1, dense_weight=0.0, window_weight=0.0))
    # only chunk 1 (the first by id of the tied first stage) was re-ranked: half the words in one window
    assert s == {1: pytest.approx(1.5), 2: 1.0, 3: 0.0}


def test_hybrid_scores_weigh_the_best_sentence_window():
    """Two chunks with the same words and chunk cosine: the one with a sentence close to the question wins,
    and a chunk stored without windows falls back to its chunk cosine."""
    idf, texts = {"zebra": 1.0}, {1: "zebra", 2: "zebra", 3: "zebra"}
    bm25, cosine = {1: 1.0, 2: 1.0, 3: 1.0}, {1: 0.3, 2: 0.3, 3: 0.5}
    window = {1: 0.3, 2: 0.8, 3: None}  # chunk 3 has no windows
    settings = DocumentSettings(dense_weight=0.0, window_weight=2.0, proximity_weight=0.0, phrase_weight=0.0)
    s = hybrid_scores("zebra", cosine, window, bm25, texts, idf, settings)
    assert s == {1: pytest.approx(1.6), 2: pytest.approx(2.6), 3: pytest.approx(2.0)}


def test_window_cosines_decode_float16_rows_and_name_the_closest_window():
    q = np.array([1.0, 0.0], dtype=np.float32)
    text = "First one. Second one. Third one."
    blob = np.array([[0.0, 1.0], [0.6, 0.8]], dtype=np.float16).tobytes()  # two windows of two sentences
    cosines = window_cosines(blob, q)
    assert cosines == pytest.approx([0.0, 0.6], abs=1e-3)
    assert closest_window(text, cosines, 2) == "Second one. Third one."
    assert closest_window(text, cosines, 1) == ""  # windows stored with another size: no text to show
    assert window_cosines(None, q) is None and closest_window(text, None, 2) == ""


def test_word_idf_matches_bm25():
    idf = word_idf(["zebra stripes", "zebra road", "lion"])
    assert idf["zebra"] == pytest.approx(np.log(1 + (3 - 2 + 0.5) / (2 + 0.5)))
    assert idf["lion"] > idf["zebra"] and "the" not in word_idf(["the lion"])


# ------------------------------------------------------------------------- tiny end-to-end retrieval

PAPERS = [
    ("Ferrets were infected with the Zarnov virus. The incubation period in ferrets was four days on average. "
     "Viral shedding peaked on day six.\n\nNeutralising antibodies appeared after two weeks in every animal.",
     [("How long was the incubation period in ferrets?", "four days on average"),
      ("When did neutralising antibodies appear?", "after two weeks")]),
    ("A survey of 1,200 hospital workers measured mask use. Surgical masks were worn by 83% of nurses. "
     "Respirators were preferred in intensive care units.\n\nHand hygiene compliance rose after training.",
     [("What share of nurses wore surgical masks?", "83% of nurses"),
      ("Where were respirators preferred?", "intensive care units")]),
    ("The spike protein binds the ACE2 receptor. Cryo-electron microscopy resolved the structure at 3.5 "
     "angstroms.\n\nA furin cleavage site distinguishes the new coronavirus from its relatives.",
     [("What receptor does the spike protein bind?", "ACE2 receptor"),
      ("What resolution did cryo-electron microscopy reach?", "3.5 angstroms")]),
]


def squad(papers) -> dict:
    return {"data": [{"paragraphs": [{"context": text, "document_id": i, "qas": [
        {"id": f"{i}-{j}", "question": qq, "answers": [{"text": a, "answer_start": text.index(a)}]}
        for j, (qq, a) in enumerate(qas)]}]} for i, (text, qas) in enumerate(papers)]}


@pytest.mark.integration
async def test_retrieval_eval_end_to_end_with_minilm(tmp_path: Path):
    from bot.config import env_cache_dir
    from lm import hub

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(squad(PAPERS)))
    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir())), chunk_tokens=24, chunk_overlap_tokens=4)
    settings = Settings(data_dir=tmp_path / "data", documents=docs)

    result = await retrieval.retrieval_eval(settings, path, k=3, show_progress=False)
    assert result["papers"] == 3 and result["questions"] == 6 and result["chunks"] > 3  # several chunks a paper
    assert result["answer_in_some_chunk"] == 1.0
    assert set(result["modes"]) == set(retrieval.RETRIEVAL_MODES)
    for mode in ("bm25", "hybrid"):
        figures = result["modes"][mode]
        assert figures["all"]["recall@1"] >= 5 / 6 and figures["all"]["recall@5"] == 1.0
        assert figures["tune"]["n"] + figures["test"]["n"] == 6

    # the rerun reuses the stored chunks and index: nothing is embedded or rebuilt again
    store = retrieval.eval_store(settings, path)
    assert (store / "docent.db").is_file()
    engine, services = await open_services(retrieval.eval_settings(settings, store))
    kb = services.knowledge
    try:
        assert len(await kb.documents(retrieval.SCOPE)) == 3
        async with kb.sessions() as session:  # every chunk carries the embeddings of its sentence windows
            stored = (await session.scalars(select(Chunk))).all()
        for chunk in stored:
            windows = sentence_windows(chunk.text, docs.window_sentences)
            got = np.frombuffer(chunk.window_embeddings, dtype=np.float16).reshape(len(windows), -1)
            cosines = (got.astype(np.float32) * kb.encoder.encode(windows)).sum(axis=1)
            assert np.allclose(cosines, 1.0, atol=3e-3)
        index = await kb.refresh(retrieval.SCOPE)
        assert index.rebuilt_reason is None and len(index) == result["chunks"]
        assert await kb.refresh(retrieval.SCOPE) is index  # the index in memory is reused while SQL is unchanged
    finally:
        await engine.dispose()
    again = await retrieval.retrieval_eval(settings, path, k=3, show_progress=False)
    assert again["modes"] == result["modes"]
