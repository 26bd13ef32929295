"""bot.services.knowledge.KnowledgeBase with the real MiniLM encoder and SQLite: sentence windows are stored
at ingest, filled in for chunks stored without them, and quoted as evidence."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from bot.config import DocumentSettings, Settings
from bot.db.models import Chunk
from bot.knowledge.chunk import sentence_windows
from bot.services import evaluate as ev

pytestmark = pytest.mark.integration

REPORT = (b"Ferrets were infected with the Zarnov virus. The incubation period in ferrets was four days on average. "
          b"Viral shedding peaked on day six. Neutralising antibodies appeared after two weeks in every animal.")


def settings_for(tmp_path: Path, window_sentences: int) -> Settings:
    from lm import hub

    docs = DocumentSettings(encoder=str(hub.pull("minilm-l6")), window_sentences=window_sentences)
    return Settings(data_dir=tmp_path / "data", documents=docs)


async def stored_windows(kb) -> list[tuple[str, bytes | None]]:
    async with kb.sessions() as s:
        return [(c.text, c.window_embeddings) for c in (await s.scalars(select(Chunk))).all()]


async def test_windows_are_filled_for_chunks_stored_without_them(tmp_path: Path):
    settings = settings_for(tmp_path, window_sentences=0)
    engine, kb = await ev.open_knowledge(settings)
    try:
        await kb.ingest("s", REPORT, "report.txt")
        assert [blob for _, blob in await stored_windows(kb)] == [None]  # windows off: chunk embeddings only
        passage, = await kb.search("s", "How long was the incubation period in ferrets?", 1)
        assert passage.evidence == ""
    finally:
        await engine.dispose()

    # the same database opened with windows on (an upgraded deployment): the first search fills them in
    settings = dataclasses.replace(settings, documents=dataclasses.replace(settings.documents, window_sentences=2))
    engine, kb = await ev.open_knowledge(settings)
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
    from bot.services.knowledge import embed_chunks, window_blobs
    from lm import hub
    from lm.encoder import Encoder

    encoder = Encoder.load(hub.pull("minilm-l6"))
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
