"""A document stored while it is being indexed: its row first (status "indexing"), its chunks a batch at a time,
then "ready". A large upload's embeddings never have to be held in memory all at once, and searches, /docs and
training data see only ready documents, so a half-indexed one is never used. An ingest that fails or is stopped
deletes its row (the chunks go by ON DELETE CASCADE); one cut off by a crash is deleted at the next start
(`discard_unfinished`). Same conventions as `queries.py`: writers commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import Chunk, Document
from bot.db.queries import NewChunk, commit_new_document


async def begin_document(session: AsyncSession, *, scope: str, name: str, mime: str, sha256: str, size_bytes: int,
                         chat_id: int | None = None, user_id: int | None = None,
                         pages: int | None = None) -> Document:
    """The row of a document about to be indexed, with no chunks yet; commits. Raises DuplicateDocumentError
    when the scope already holds (or is indexing) a file with the same sha256."""
    document = Document(scope=scope, chat_id=chat_id, user_id=user_id, name=name, mime=mime, sha256=sha256,
                        size_bytes=size_bytes, pages=pages, chunk_count=0, status="indexing")
    return await commit_new_document(session, document)


async def add_chunks(session: AsyncSession, document_id: int, first_ordinal: int, chunks: Sequence[NewChunk]) -> None:
    """Store the next batch of a document's chunks, numbered from `first_ordinal`; commits."""
    if not chunks:
        return
    await session.execute(insert(Chunk), [
        dict(document_id=document_id, ordinal=first_ordinal + i, text=c.text, page=c.page, heading=c.heading,
             token_count=c.token_count, embedding=c.embedding, window_embeddings=c.window_embeddings)
        for i, c in enumerate(chunks)])
    await session.commit()


async def finish_document(session: AsyncSession, document_id: int) -> Document:
    """Mark a document ready, with the count of the chunks stored for it; commits."""
    count = await session.scalar(select(func.count()).select_from(Chunk).where(Chunk.document_id == document_id))
    await session.execute(update(Document).where(Document.id == document_id)
                          .values(status="ready", chunk_count=count))
    await session.commit()
    return await session.get(Document, document_id, populate_existing=True)


async def discard_document(session: AsyncSession, document_id: int) -> None:
    """Delete a document that was not finished, with whatever chunks it has; commits."""
    await session.execute(delete(Document).where(Document.id == document_id))
    await session.commit()


async def discard_unfinished(session: AsyncSession, scope: str | None = None) -> list[str]:
    """Delete every document (of `scope`, or of any) an earlier process left indexing: it died mid-ingest.
    Returns their names."""
    unfinished = Document.status != "ready"
    if scope is not None:
        unfinished = unfinished & (Document.scope == scope)
    names = list(await session.scalars(select(Document.name).where(unfinished)))
    if names:
        await session.execute(delete(Document).where(unfinished))
        await session.commit()
    return names
