"""lm.index with small random vectors: fusion (lm.rank), removal, persistence, corruption, scopes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lm.index import (
    HybridIndex,
    IndexCorrupt,
    IndexStale,
    fingerprint_ids,
    open_or_rebuild,
    scope_dir,
)
from lm.rank import bm25_tokens, hybrid_candidates, rrf_fuse, score_fuse

DIM = 16
TEXTS = {
    10: "Masks reduce the transmission of respiratory viruses in crowded places.",
    11: "The incubation period of the coronavirus is about five days.",
    12: "Hand washing with soap removes most bacteria from the skin.",
    13: "Vaccines train the immune system to recognise a pathogen.",
    14: "The zyxquorp protocol was approved by the committee in 2021.",  # the keyword-only target
    15: "Ventilation of indoor spaces lowers the concentration of aerosols.",
}


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def vecs() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(0)
    return {i: unit(rng.normal(size=DIM)) for i in TEXTS}


def build(d: Path, vecs: dict[int, np.ndarray], ids: list[int] | None = None) -> HybridIndex:
    ids = ids or list(TEXTS)
    idx = HybridIndex(d, DIM)
    idx.add(ids, np.stack([vecs[i] for i in ids]), [TEXTS[i] for i in ids])
    return idx


def near(v: np.ndarray, seed: int = 1, noise: float = 0.1) -> np.ndarray:
    """A query vector close to v: the stand-in for a paraphrase."""
    return unit(v + noise * np.random.default_rng(seed).normal(size=v.shape))


def test_fusion_finds_keyword_and_paraphrase_matches(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs)
    # the vector points at chunk 11 (a "paraphrase" sharing no word with it), the text names chunk 14
    q_vec, q_text = near(vecs[11]), "what is zyxquorp"
    dense = [i for i, _ in idx.search(q_vec, q_text, k=2, mode="dense")]
    sparse = [i for i, _ in idx.search(q_vec, q_text, k=2, mode="bm25")]
    fused = [i for i, _ in idx.search(q_vec, q_text, k=2, mode="rrf")]
    assert dense[0] == 11 and 14 not in dense
    assert sparse == [14]  # BM25 returns only chunks that share a word with the query
    assert set(fused) == {11, 14}
    scored = [i for i, _ in idx.search(q_vec, q_text, k=2, mode="score")]
    assert set(scored) == {11, 14}


def test_weights_shift_the_fusion(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs)
    q_vec, q_text = near(vecs[11]), "zyxquorp"
    # with equal weights, 14 (in both lists) beats 11 (top of the dense list only); weights move that
    assert idx.search(q_vec, q_text, k=1)[0][0] == 14
    assert idx.search(q_vec, q_text, k=1, weights=(1.0, 0.0))[0][0] == 11
    assert idx.search(q_vec, q_text, k=1, weights=(0.0, 1.0))[0][0] == 14
    assert idx.search(q_vec, q_text, k=1, weights=(1.0, 0.0), mode="score")[0][0] == 11


def test_bm25_uses_stopwords_and_stemming(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs)
    assert idx.search(None, "the of in", mode="bm25") == []  # stopwords only: no match at all
    assert idx.search(None, "vaccine", mode="bm25")[0][0] == 13  # "Vaccines" in the text
    assert bm25_tokens("The masks are tested") == ["mask", "test"]


def test_removed_ids_are_never_returned(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs)
    idx.search(near(vecs[14]), "zyxquorp", k=6)  # builds BM25 before the removal
    assert idx.remove([14, 999]) == 1
    assert len(idx) == 5
    for mode in ("dense", "bm25", "rrf"):
        got = [i for i, _ in idx.search(vecs[14], "zyxquorp protocol committee", k=10, mode=mode)]
        assert 14 not in got
    assert idx.search(None, "zyxquorp", mode="bm25") == []
    # and after a save/load round trip
    idx.save()
    again = HybridIndex.load(tmp_path, DIM)
    assert 14 not in again.ids and 14 not in [i for i, _ in again.search(vecs[14], "zyxquorp", k=10)]


def test_save_load_round_trip(tmp_path: Path, vecs):
    idx = build(tmp_path / "s", vecs)
    idx.save()
    again = HybridIndex.load(tmp_path / "s", DIM)
    assert again.fingerprint == idx.fingerprint == fingerprint_ids(TEXTS)
    q_vec, q_text = near(vecs[12]), "soap zyxquorp"
    for mode in ("dense", "bm25", "rrf"):
        a, b = idx.search(q_vec, q_text, mode=mode), again.search(q_vec, q_text, mode=mode)
        assert [i for i, _ in a] == [i for i, _ in b] and np.allclose([s for _, s in a], [s for _, s in b])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["dim"] == DIM and manifest["version"] == 1
    assert not list((tmp_path / "s").glob(".*tmp"))  # no temp files left behind


def test_load_errors(tmp_path: Path, vecs):
    with pytest.raises(IndexStale, match="manifest.json is missing"):
        HybridIndex.load(tmp_path / "none", DIM)
    build(tmp_path / "s", vecs).save()
    with pytest.raises(IndexStale, match="dim 16, expected 32"):
        HybridIndex.load(tmp_path / "s", 32)
    good = (tmp_path / "s" / "dense.faiss").read_bytes()
    data = bytearray(good)
    data[-5] ^= 0xFF
    (tmp_path / "s" / "dense.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="dense.faiss: checksum"):
        HybridIndex.load(tmp_path / "s", DIM)
    (tmp_path / "s" / "dense.faiss").write_bytes(good)
    assert len(HybridIndex.load(tmp_path / "s", DIM)) == 6
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorrupt, match="unreadable manifest"):
        HybridIndex.load(tmp_path / "s", DIM)
    build(tmp_path / "s", vecs).save()
    (tmp_path / "s" / "texts.json").unlink()
    with pytest.raises(IndexCorrupt, match="texts.json is missing"):
        HybridIndex.load(tmp_path / "s", DIM)


def rows_of(vecs: dict[int, np.ndarray], ids: list[int], calls: list[int]):
    def rows():
        calls.append(1)
        for i in ids:
            yield i, vecs[i], TEXTS[i]
    return rows


def test_open_or_rebuild_loads_lazily_and_rebuilds(tmp_path: Path, vecs):
    d, ids, calls = tmp_path / "scope", list(TEXTS), []
    idx = open_or_rebuild(d, DIM, fingerprint_ids(ids), rows_of(vecs, ids, calls))
    assert calls == [1] and idx.rebuilt_reason.startswith("IndexStale") and len(idx) == 6
    # intact and current: loaded from disk, the source of truth is not read
    idx = open_or_rebuild(d, DIM, fingerprint_ids(ids), rows_of(vecs, ids, calls))
    assert calls == [1] and idx.rebuilt_reason is None and len(idx) == 6
    # corrupt file: rebuilt
    (d / "texts.json").write_text('{"ids": [1], "texts": ["x"]}')
    idx = open_or_rebuild(d, DIM, fingerprint_ids(ids), rows_of(vecs, ids, calls))
    assert calls == [1, 1] and idx.rebuilt_reason.startswith("IndexCorrupt")
    assert idx.search(near(vecs[14]), "zyxquorp", k=1)[0][0] == 14
    # the source of truth lost a chunk: stale fingerprint, rebuilt without it
    fewer = ids[:-1]
    idx = open_or_rebuild(d, DIM, fingerprint_ids(fewer), rows_of(vecs, fewer, calls))
    assert calls == [1, 1, 1] and idx.rebuilt_reason.startswith("stale") and sorted(idx.ids) == sorted(fewer)
    assert HybridIndex.load(d, DIM).fingerprint == fingerprint_ids(fewer)  # the rebuild was saved


def test_two_scopes_never_see_each_others_ids(tmp_path: Path, vecs):
    a = build(scope_dir(tmp_path, "chat-1"), vecs, [10, 11, 12])
    b = build(scope_dir(tmp_path, "chat-2"), vecs, [13, 14, 15])
    a.save()
    b.save()
    for idx, own in ((a, {10, 11, 12}), (b, {13, 14, 15})):
        for loaded in (idx, HybridIndex.load(idx.dir, DIM)):
            for q in TEXTS:
                got = {i for i, _ in loaded.search(vecs[q], TEXTS[q], k=10)}
                assert got and got <= own
    with pytest.raises(ValueError, match="bad index scope name"):
        scope_dir(tmp_path, "../chat-1")


def test_bad_input_changes_nothing(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs, [10, 11])
    before = idx.fingerprint
    with pytest.raises(ValueError, match="already in the index: \\[11\\]"):
        idx.add([11, 12], np.stack([vecs[11], vecs[12]]), ["x", "y"])
    with pytest.raises(ValueError, match="shape"):
        idx.add([12], np.zeros((1, DIM + 1)), ["x"])
    with pytest.raises(ValueError, match="differ in length"):
        idx.add([12, 13], np.stack([vecs[12]]), ["x"])
    with pytest.raises(ValueError, match="NaN"):
        idx.add([12], np.full((1, DIM), np.nan), ["x"])
    assert idx.fingerprint == before and len(idx) == 2
    with pytest.raises(ValueError, match="mode must be one of"):
        idx.search(vecs[10], "x", mode="sparse")
    with pytest.raises(ValueError, match="needs a query vector"):
        idx.search(None, "x")
    with pytest.raises(ValueError, match="16 values"):
        idx.search(np.zeros(3), "x", mode="dense")


def test_fusion_functions():
    assert rrf_fuse([[1, 2], [2, 3]], [1.0, 1.0], k=60)[0][0] == 2  # in both lists wins
    fused = dict(rrf_fuse([[1, 2], [2, 3]], [1.0, 0.5], k=60))
    assert fused[1] == pytest.approx(1 / 61) and fused[3] == pytest.approx(0.5 / 62)
    s = dict(score_fuse([[(1, 0.9), (2, 0.5)], [(2, 12.0), (3, 2.0)]], [1.0, 1.0]))
    assert s == {1: 1.0, 2: 1.0, 3: 0.0}


def test_hybrid_candidates_are_the_bm25_hits_then_the_dense_ones(tmp_path: Path, vecs):
    idx = build(tmp_path, vecs)
    q_vec, q_text = near(vecs[11]), "what is zyxquorp"
    ids, bm25 = hybrid_candidates(idx, q_vec, q_text, 3)
    dense = [i for i, _ in idx.search(q_vec, None, k=3, mode="dense")]
    assert ids == [14] + [i for i in dense if i != 14] and dense[0] == 11
    assert bm25 == dict(idx.search(None, q_text, k=3, mode="bm25")) and list(bm25) == [14]


def test_empty_index_returns_nothing(tmp_path: Path):
    idx = HybridIndex(tmp_path, DIM)
    assert idx.search(np.ones(DIM), "anything") == []
    idx.save()
    assert len(HybridIndex.load(tmp_path, DIM)) == 0
