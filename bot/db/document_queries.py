"""A document stored while it is being indexed: its row first (status "indexing"), its chunks a batch at a time,
then "ready". A large upload's embeddings never have to be held in memory all at once, and searches, /docs and
training data see only ready documents, so a half-indexed one is never used. An ingest that fails or is stopped
deletes its row (the chunks go by ON DELETE CASCADE); one cut off by a crash is deleted at the next start
(`discard_unfinished`). Same conventions as `chat_queries.py`: writers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from bot.db.lease_queries import Lease, take_abandoned
from bot.db.session import check_choice, upsert
from bot.db.tables import Chunk, Document, DocumentStatus, ScopeVersion

# ---- documents and chunks -----------------------------------------------------------------------


@dataclass
class NewChunk:
    """A chunk to store: its text, where it came from, and its float32 embedding as bytes."""

    text: str
    token_count: int
    page: int | None = None
    heading: str | None = None
    embedding: bytes | None = None
    window_embeddings: bytes | None = None  # float16 (windows, dim), see Chunk.window_embeddings


class DuplicateDocumentError(ValueError):
    """The same file (by sha256) is already in this scope."""

    def __init__(self, existing: Document):
        super().__init__(f"this file is already here as {existing.name!r} (id {existing.id})")
        self.existing = existing


async def find_document_by_sha(session: AsyncSession, scope: str, sha256: str) -> Document | None:
    """The document in `scope` with this content hash, if any."""
    return await session.scalar(select(Document).where(Document.scope == scope, Document.sha256 == sha256))


async def add_document_with_chunks(
    session: AsyncSession,
    *,
    scope: str,
    name: str,
    mime: str,
    sha256: str,
    size_bytes: int,
    chunks: Sequence[NewChunk],
    chat_id: int | None = None,
    user_id: int | None = None,
    pages: int | None = None,
    status: DocumentStatus = "ready",
) -> Document:
    """Store a document and all its chunks in one transaction; commits.

    Raises DuplicateDocumentError when the scope already holds a file with the same sha256.
    """
    check_choice(status, DocumentStatus, "document status")
    document = Document(
        scope=scope,
        chat_id=chat_id,
        user_id=user_id,
        name=name,
        mime=mime,
        sha256=sha256,
        size_bytes=size_bytes,
        pages=pages,
        chunk_count=len(chunks),
        status=status,
    )
    document.chunks = [
        Chunk(ordinal=i, text=c.text, page=c.page, heading=c.heading, token_count=c.token_count, embedding=c.embedding,
              window_embeddings=c.window_embeddings)
        for i, c in enumerate(chunks)
    ]
    return await commit_new_document(session, document)


async def commit_new_document(session: AsyncSession, document: Document) -> Document:
    """Add a new document row (with whatever chunks it holds) and commit; raises DuplicateDocumentError when its
    scope already has a file with the same sha256."""
    session.add(document)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        existing = await find_document_by_sha(session, document.scope, document.sha256)
        if existing is not None:
            raise DuplicateDocumentError(existing) from None
        raise
    return document


async def set_document_status(session: AsyncSession, document_id: int, status: DocumentStatus) -> None:
    """Mark a document indexing, ready or failed; commits."""
    check_choice(status, DocumentStatus, "document status")
    await session.execute(update(Document).where(Document.id == document_id).values(status=status))
    await session.commit()


async def list_documents(session: AsyncSession, scope: str) -> list[Document]:
    """The documents of a scope that are ready (not still being indexed), oldest first."""
    rows = await session.scalars(select(Document).where(Document.scope == scope, Document.status == "ready")
                                 .order_by(Document.id))
    return list(rows)


async def has_documents(session: AsyncSession, scope: str) -> bool:
    """Whether the scope has a ready document."""
    found = await session.scalar(select(Document.id).where(Document.scope == scope, Document.status == "ready")
                                 .limit(1))
    return found is not None


async def chunks_for_scope(session: AsyncSession, scope: str) -> list[Chunk]:
    """Every chunk of the scope's ready documents, with its document, in reading order (index rebuilds)."""
    rows = await session.scalars(
        select(Chunk)
        .join(Chunk.document)
        .where(Document.scope == scope, Document.status == "ready")
        .options(joinedload(Chunk.document))
        .order_by(Chunk.document_id, Chunk.ordinal)
    )
    return list(rows)


async def chunks_by_ids(session: AsyncSession, ids: Sequence[int]) -> list[Chunk]:
    """The chunks with these ids (retrieval hits), with their documents, in the order of `ids`."""
    rows = await session.scalars(select(Chunk).where(Chunk.id.in_(ids)).options(joinedload(Chunk.document)))
    by_id = {c.id: c for c in rows}
    return [by_id[i] for i in ids if i in by_id]


async def ready_chunk_ids(session: AsyncSession, scope: str) -> list[int]:
    """The ids of the scope's ready chunks, in no order: what its index's fingerprint is computed over."""
    return list(await session.scalars(select(Chunk.id).join(Chunk.document)
                                      .where(Document.scope == scope, Document.status == "ready")))


async def ready_chunk_rows(session: AsyncSession, scope: str) -> list[tuple[int, bytes | None, str]]:
    """(id, embedding, text) of the scope's ready chunks, by id: what its index is built from."""
    rows = await session.execute(select(Chunk.id, Chunk.embedding, Chunk.text).join(Chunk.document)
                                 .where(Document.scope == scope, Document.status == "ready").order_by(Chunk.id))
    return [tuple(r) for r in rows]


# ---- sentence windows of chunks stored without them ------------------------------------------------------


async def chunks_without_windows(session: AsyncSession, scope: str) -> list[tuple[int, str]]:
    """(id, text) of the scope's chunks stored without sentence-window embeddings (Chunk.window_embeddings)."""
    rows = await session.execute(select(Chunk.id, Chunk.text).join(Chunk.document)
                                 .where(Document.scope == scope, Chunk.window_embeddings.is_(None)))
    return [tuple(r) for r in rows]


async def set_window_embeddings(session: AsyncSession, blobs: Sequence[tuple[int, bytes]]) -> None:
    """Store the sentence-window embeddings of chunks, as (chunk id, float16 bytes); commits."""
    for chunk_id, blob in blobs:
        await session.execute(update(Chunk).where(Chunk.id == chunk_id).values(window_embeddings=blob))
    await session.commit()


# ---- a document indexed a batch at a time ------------------------------------------------------------


async def begin_document(session: AsyncSession, *, scope: str, name: str, mime: str, sha256: str, size_bytes: int,
                         chat_id: int | None = None, user_id: int | None = None,
                         pages: int | None = None, lease: Lease | None = None) -> Document:
    """The row of a document about to be indexed, with no chunks yet, held under `lease`; commits. Raises
    DuplicateDocumentError when the scope already holds (or is indexing) a file with the same sha256."""
    document = Document(scope=scope, chat_id=chat_id, user_id=user_id, name=name, mime=mime, sha256=sha256,
                        size_bytes=size_bytes, pages=pages, chunk_count=0, status="indexing",
                        **(lease.values() if lease else {}))
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
    scope = await session.scalar(update(Document).where(Document.id == document_id)
                                 .values(status="ready", chunk_count=count).returning(Document.scope))
    await bump_scope(session, scope)
    await session.commit()
    return await session.get(Document, document_id, populate_existing=True)


async def bump_scope(session: AsyncSession, scope: str) -> None:
    """The scope's set of ready documents changed: its version goes up, in the caller's transaction."""
    stmt = upsert(session, ScopeVersion).values(scope=scope, version=1)
    await session.execute(stmt.on_conflict_do_update(index_elements=[ScopeVersion.scope],
                                                     set_={"version": ScopeVersion.version + 1}))


async def scope_version(session: AsyncSession, scope: str) -> int:
    """The scope's version (0: never changed)."""
    return await session.scalar(select(ScopeVersion.version).where(ScopeVersion.scope == scope)) or 0


async def discard_document(session: AsyncSession, document_id: int) -> None:
    """Delete a document that was not finished, with whatever chunks it has; commits."""
    await session.execute(delete(Document).where(Document.id == document_id))
    await session.commit()


async def discard_unfinished(session: AsyncSession, scope: str | None = None, lease: Lease | None = None,
                             now: datetime | None = None) -> list[str]:
    """Delete every document (of `scope`, or of any) that a dead process left indexing: one whose lease expired
    before `now` (any, when `now` is None: a single process), taken under `lease` first so that no other replica
    deletes it too; a failed one as well. Returns their names."""
    where = None if scope is None else Document.scope == scope
    taken = await take_abandoned(session, Document, lease or Lease("", datetime.now(UTC)), now, where)
    failed = list(await session.scalars(select(Document).where(
        Document.status == "failed", *([] if where is None else [where]))))
    names = [d.name for d in [*taken, *failed]]
    if names:
        await session.execute(delete(Document).where(Document.id.in_([d.id for d in [*taken, *failed]])))
        await session.commit()
    return names
