"""bot.db.document_queries against real SQLite and PostgreSQL: a document indexed a batch at a time is invisible until it
is ready, the same file cannot start twice in a scope, what a killed ingest left is discarded, the index reads
only ready chunks, and sentence windows are filled in for chunks stored without them."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import document_queries
from bot.db.sources import find_document
from bot.db.tables import Chunk

SCOPE = "chat:42"


@pytest.fixture
def s(db_session: AsyncSession) -> AsyncSession:
    return db_session


def batch(*texts: str) -> list[document_queries.NewChunk]:
    return [document_queries.NewChunk(text=t, token_count=len(t.split()), embedding=b"\0" * 8) for t in texts]


async def begin(s: AsyncSession, name: str, scope: str = SCOPE):
    return await document_queries.begin_document(s, scope=scope, name=name, mime="text/plain",
                                                 sha256=name.ljust(64, "0"), size_bytes=100)


async def test_a_document_stored_in_batches_is_seen_only_once_ready(s: AsyncSession):
    doc = await begin(s, "log.txt")
    await document_queries.add_chunks(s, doc.id, 0, batch("one", "two"))
    await document_queries.add_chunks(s, doc.id, 2, batch("three"))
    assert await document_queries.list_documents(s, SCOPE) == [] and await find_document(s, SCOPE, "log.txt") is None
    assert await document_queries.chunks_for_scope(s, SCOPE) == []

    ready = await document_queries.finish_document(s, doc.id)
    assert (ready.status, ready.chunk_count) == ("ready", 3)
    assert [d.name for d in await document_queries.list_documents(s, SCOPE)] == ["log.txt"]
    assert [(c.ordinal, c.text) for c in await document_queries.chunks_for_scope(s, SCOPE)] == [(0, "one"), (1, "two"), (2, "three")]


async def test_the_same_file_cannot_be_indexed_twice_at_once(s: AsyncSession):
    doc = await begin(s, "log.txt")
    with pytest.raises(document_queries.DuplicateDocumentError) as raised:
        await begin(s, "log.txt")
    assert raised.value.existing.id == doc.id and raised.value.existing.status == "indexing"
    await begin(s, "log.txt", scope="chat:7")  # another chat may have the same file


async def test_unfinished_documents_are_discarded_with_their_chunks(s: AsyncSession):
    kept = await begin(s, "kept.txt")
    await document_queries.add_chunks(s, kept.id, 0, batch("kept"))
    await document_queries.finish_document(s, kept.id)
    for name, scope in (("half.txt", SCOPE), ("other.txt", "chat:7")):
        doc = await begin(s, name, scope)
        await document_queries.add_chunks(s, doc.id, 0, batch("half", "done"))

    assert await document_queries.discard_unfinished(s, "chat:7") == ["other.txt"]
    assert await document_queries.discard_unfinished(s) == ["half.txt"]
    assert await document_queries.discard_unfinished(s) == []
    assert await s.scalar(select(func.count()).select_from(Chunk)) == 1
    assert [d.name for d in await document_queries.list_documents(s, SCOPE)] == ["kept.txt"]

    stopped = await begin(s, "stopped.txt")
    await document_queries.add_chunks(s, stopped.id, 0, batch("a"))
    await document_queries.discard_document(s, stopped.id)
    assert await s.scalar(select(func.count()).select_from(Chunk)) == 1


async def test_the_index_reads_only_ready_chunks(s: AsyncSession):
    ready = await begin(s, "ready.txt")
    await document_queries.add_chunks(s, ready.id, 0, batch("one", "two"))
    await document_queries.finish_document(s, ready.id)
    half = await begin(s, "half.txt")
    await document_queries.add_chunks(s, half.id, 0, batch("half"))
    other = await begin(s, "other.txt", scope="chat:7")
    await document_queries.add_chunks(s, other.id, 0, batch("other"))
    await document_queries.finish_document(s, other.id)

    rows = await document_queries.ready_chunk_rows(s, SCOPE)
    assert [(text, embedding) for _, embedding, text in rows] == [("one", b"\0" * 8), ("two", b"\0" * 8)]
    assert [i for i, _, _ in rows] == sorted(i for i, _, _ in rows)
    assert sorted(await document_queries.ready_chunk_ids(s, SCOPE)) == [i for i, _, _ in rows]


async def test_sentence_windows_are_filled_in_for_chunks_stored_without_them(s: AsyncSession):
    doc = await begin(s, "log.txt")
    await document_queries.add_chunks(s, doc.id, 0, batch("one", "two"))
    await document_queries.finish_document(s, doc.id)
    other = await begin(s, "other.txt", scope="chat:7")
    await document_queries.add_chunks(s, other.id, 0, batch("other"))

    missing = await document_queries.chunks_without_windows(s, SCOPE)
    assert sorted(text for _, text in missing) == ["one", "two"]
    await document_queries.set_window_embeddings(s, [(chunk_id, text.encode()) for chunk_id, text in missing])
    assert await document_queries.chunks_without_windows(s, SCOPE) == []
    assert [(c.text, c.window_embeddings) for c in await document_queries.chunks_for_scope(s, SCOPE)] == [
        ("one", b"one"), ("two", b"two")]
    assert [text for _, text in await document_queries.chunks_without_windows(s, "chat:7")] == ["other"]
