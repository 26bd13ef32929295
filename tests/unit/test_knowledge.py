"""bot.services.knowledge.KnowledgeBase with the real MiniLM encoder and SQLite: sentence windows are stored
at ingest, filled in for chunks stored without them, and quoted as evidence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from bot.config import DocumentSettings, Settings
from bot.db.tables import Chunk
from bot.documents.chunk import sentence_windows
from bot.services import open_services

pytestmark = pytest.mark.integration

REPORT = (b"Ferrets were infected with the Zarnov virus. The incubation period in ferrets was four days on average. "
          b"Viral shedding peaked on day six. Neutralising antibodies appeared after two weeks in every animal.")


def settings_for(tmp_path: Path, window_sentences: int) -> Settings:
    from bot.config import env_cache_dir
    from lm import hub

    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6", env_cache_dir())), window_sentences=window_sentences)
    return Settings(data_dir=tmp_path / "data", documents=docs)


async def stored_windows(kb) -> list[tuple[str, bytes | None]]:
    async with kb.sessions() as s:
        return [(c.text, c.window_embeddings) for c in (await s.scalars(select(Chunk))).all()]


async def test_windows_are_filled_for_chunks_stored_without_them(tmp_path: Path):
    settings = settings_for(tmp_path, window_sentences=0)
    engine, services = await open_services(settings)
    kb = services.knowledge
    try:
        await kb.ingest("s", REPORT, "report.txt")
        assert [blob for _, blob in await stored_windows(kb)] == [None]  # windows off: chunk embeddings only
        passage, = await kb.search("s", "How long was the incubation period in ferrets?", 1)
        assert passage.evidence == ""
    finally:
        await engine.dispose()

    # the same database opened with windows on (an upgraded deployment): the first search fills them in
    settings = dataclasses.replace(settings, documents=dataclasses.replace(settings.documents, window_sentences=2))
    engine, services = await open_services(settings)
    kb = services.knowledge
    try:
        passage, = await kb.search("s", "How long was the incubation period in ferrets?", 1)
        (text, blob), = await stored_windows(kb)
        windows = sentence_windows(text, 2)
        got = np.frombuffer(blob, dtype=np.float16).reshape(len(windows), -1).astype(np.float32)
        assert np.allclose((got * kb.encoder.encode(windows)).sum(axis=1), 1.0, atol=3e-3)
        assert "four days on average" in passage.evidence and passage.evidence in windows
        assert await kb._fill_windows("s") == 0  # nothing left to fill
    finally:
        await engine.dispose()


def test_windows_embedded_a_group_at_a_time_match_one_pass(monkeypatch: pytest.MonkeyPatch):
    from bot.config import env_cache_dir
    from bot.services.knowledge import embed_chunks, window_blobs
    from lm import hub
    from lm.encoder import Encoder

    encoder = Encoder.load(hub.pull("minilm-l6", env_cache_dir()))
    sentences = REPORT.decode().split(". ")
    texts = [". ".join(sentences[i:]) for i in range(3)]
    windows = [sentence_windows(t, 2) or [t] for t in texts]  # 3, 2 and 1 windows
    flat = [w for ws in windows for w in ws]
    monkeypatch.setattr("bot.services.knowledge.WINDOW_GROUP", 3)  # groups: chunk 0, then chunks 1 and 2
    seen: list[float] = []
    vectors, blobs = embed_chunks(encoder, texts, windows, seen.append, batch_size=2)
    np.testing.assert_allclose(vectors, encoder.encode(texts), atol=3e-3)  # int8 weights: batch-dependent
    one_pass = window_blobs(windows, encoder.encode(flat))
    assert [np.frombuffer(b, np.float16).shape for b in blobs] == [np.frombuffer(b, np.float16).shape for b in one_pass]
    for got, want in zip(blobs, one_pass, strict=True):
        np.testing.assert_allclose(np.frombuffer(got, np.float16), np.frombuffer(want, np.float16), atol=2e-3)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    assert embed_chunks(encoder, texts, [], seen.append)[1] == [None, None, None]  # windows off


LONG = " ".join(f"Station {i} recorded {i * 7 % 31} millimetres of rain on day {i}." for i in range(120)).encode()


def _rows(db: Path) -> tuple[list[tuple], int]:
    """(documents as (name, status, chunk_count), chunk rows), read by a second connection as another process
    would see them."""
    import sqlite3

    with sqlite3.connect(db) as con:
        docs = con.execute("SELECT name, status, chunk_count FROM documents ORDER BY id").fetchall()
        return docs, con.execute("SELECT count(*) FROM chunks").fetchone()[0]


async def test_an_ingest_stores_batches_under_an_unready_document_and_a_stop_deletes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    settings = settings_for(tmp_path, window_sentences=2)
    settings = dataclasses.replace(settings, documents=dataclasses.replace(settings.documents, chunk_tokens=48,
                                                                              chunk_overlap_tokens=8))
    monkeypatch.setattr("bot.services.knowledge.STORE_BATCH", 3)
    db = settings.data_dir / "docent.db"
    engine, services = await open_services(settings)
    kb = services.knowledge
    seen: list[tuple[list[tuple], int]] = []

    class Stopped(Exception):
        pass

    def stop() -> None:  # called between steps and batches; the third batch's first call ends the ingest
        seen.append(_rows(db))
        if seen[-1][1] >= 6:
            raise Stopped

    try:
        with pytest.raises(Stopped):
            await kb.ingest("s", LONG, "rain.txt", stop=stop)
        assert seen[-1] == ([("rain.txt", "indexing", 0)], 6)  # two batches were in SQL, not yet ready
        assert await kb.documents("s") == []
        assert _rows(db) == ([], 0)  # and the stop deleted them

        result = await kb.ingest("s", LONG, "rain.txt")
        assert result.chunks > 6 and not result.duplicate
        async with kb.sessions() as s:
            chunks = (await s.scalars(select(Chunk).order_by(Chunk.id))).all()
        assert [c.ordinal for c in chunks] == list(range(result.chunks))
        assert all(c.window_embeddings for c in chunks)
        assert _rows(db) == ([("rain.txt", "ready", result.chunks)], result.chunks)
        passage, = await kb.search("s", "How much rain did station 57 record?", 1)
        assert "Station 57 recorded" in passage.evidence
    finally:
        await engine.dispose()


async def test_documents_a_killed_ingest_left_unfinished_are_discarded(tmp_path: Path):
    from bot.db import document_queries

    settings = settings_for(tmp_path, window_sentences=2)
    engine, services = await open_services(settings)
    kb = services.knowledge
    try:
        await kb.ingest("s", REPORT, "report.txt")
        async with kb.sessions() as s:  # what a process killed mid-ingest leaves behind
            for scope in ("s", "other"):
                doc = await document_queries.begin_document(s, scope=scope, name="half.txt", mime="text/plain",
                                                            sha256=scope * 32, size_bytes=10)
                await document_queries.add_chunks(s, doc.id, 0, [document_queries.NewChunk(text="half", token_count=1)])
        assert [d.name for d in await kb.documents("s")] == ["report.txt"]
        assert await kb.discard_unfinished("other") == ["half.txt"]
        assert _rows(settings.data_dir / "docent.db") == ([("report.txt", "ready", 1), ("half.txt", "indexing", 0)], 2)
        assert await kb.discard_unfinished() == ["half.txt"]
        assert _rows(settings.data_dir / "docent.db") == ([("report.txt", "ready", 1)], 1)
    finally:
        await engine.dispose()
