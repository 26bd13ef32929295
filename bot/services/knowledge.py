"""The document knowledge base: ingest files into a scope, and retrieve passages from it.

SQL holds documents and chunks (text, page, heading, vector) and is the truth; each scope's FAISS + BM25
index on disk is a cache of it, rebuilt whenever its fingerprint (the scope's chunk ids) does not match.
A scope is "chat:<id>" for a chat's uploads or any label from the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import queries as q
from bot.db.models import Chunk, Document
from bot.knowledge.chunk import chunk_document
from bot.knowledge.parse import ParsedDocument, parse_document

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]  # (stage, fraction done)


def chat_scope(chat_id: int) -> str:
    return f"chat:{chat_id}"


@dataclass
class Passage:
    """A retrieved chunk with what a citation needs."""

    chunk_id: int
    document: str
    page: int | None
    heading: str | None
    text: str
    score: float
    dense: float  # cosine similarity to the query, for the "nothing relevant" decision

    def cite(self) -> str:
        return self.document + (f", p. {self.page}" if self.page else "")


@dataclass
class Ingested:
    document: Document
    chunks: int
    pages: int | None
    duplicate: bool = False


class KnowledgeBase:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]):
        self.settings = settings
        self.sessions = sessions
        self._encoder = None
        self._indexes: dict[str, object] = {}
        self._lock = threading.Lock()  # the encoder and the index files are used from worker threads

    # ---- the encoder ---------------------------------------------------------------------------

    @property
    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from lm import hub
                from lm.encoder import Encoder

                self._encoder = Encoder.load(hub.resolve(self.settings.documents.encoder, self.settings.cache_dir))
            return self._encoder

    def chunk_limit(self) -> int:
        """Chunk size in encoder tokens: what the settings ask for, never beyond the encoder's window."""
        return min(self.settings.documents.chunk_tokens, self.encoder.max_text_tokens)

    # ---- ingest --------------------------------------------------------------------------------

    async def ingest(self, scope: str, data: bytes, filename: str, mime: str | None = None,
                     chat_id: int | None = None, progress: Progress | None = None) -> Ingested:
        """Parse (in a child process), chunk, embed and index one file; nothing is stored on failure.

        Raises bot.knowledge.parse.DocumentError for a bad file. A file already in the scope (same
        sha256) is not indexed twice: the existing document is returned with duplicate=True.
        """
        sha = hashlib.sha256(data).hexdigest()
        async with self.sessions() as s:
            existing = await q.find_document_by_sha(s, scope, sha)
        if existing is not None:
            return Ingested(existing, existing.chunk_count, existing.pages, duplicate=True)
        report = progress or (lambda stage, frac: None)
        report("parsing", 0.0)
        docs = self.settings.documents
        parsed: ParsedDocument = await asyncio.to_thread(
            parse_document, data, filename, mime, timeout_s=docs.parse_timeout_s,
            memory_mb=docs.parse_memory_mb, max_bytes=int(docs.max_file_mb * 2**20))
        report("chunking", 0.05)
        chunks = await asyncio.to_thread(
            chunk_document, parsed, self.encoder.count_tokens, self.chunk_limit(), docs.chunk_overlap_tokens)
        if not chunks:
            from bot.knowledge.parse import DocumentError

            raise DocumentError("empty", f"{parsed.name} has no text I could index.")
        vectors = await asyncio.to_thread(
            self.encoder.encode, [c.text for c in chunks], 32,
            lambda done, total: report("embedding", 0.1 + 0.85 * done / total))
        rows = [q.NewChunk(text=c.text, token_count=c.token_count, page=c.page, heading=c.heading,
                           embedding=v.astype(np.float32).tobytes()) for c, v in zip(chunks, vectors, strict=True)]
        async with self.sessions() as s:
            try:
                document = await q.add_document_with_chunks(
                    s, scope=scope, name=parsed.name, mime=mime or parsed.kind, sha256=sha, size_bytes=len(data),
                    chunks=rows, chat_id=chat_id, pages=parsed.pages)
            except q.DuplicateDocumentError as dup:  # the same file arrived twice at once
                return Ingested(dup.existing, dup.existing.chunk_count, dup.existing.pages, duplicate=True)
        report("indexing", 0.97)
        await self.refresh(scope)
        report("done", 1.0)
        return Ingested(document, len(rows), parsed.pages)

    async def forget(self, scope: str, name_or_id: str) -> Document | None:
        """Delete a document from SQL, then from the scope's index."""
        async with self.sessions() as s:
            document = await q.delete_document(s, scope, name_or_id)
        if document is not None:
            await self.refresh(scope)
        return document

    async def documents(self, scope: str) -> list[Document]:
        async with self.sessions() as s:
            return await q.list_documents(s, scope)

    # ---- the per-scope index ---------------------------------------------------------------------

    def index_dir(self, scope: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scope)
        return self.settings.data_dir / "indexes" / f"{safe}-{hashlib.sha1(scope.encode()).hexdigest()[:8]}"

    async def _scope_rows(self, scope: str) -> list[tuple[int, bytes | None, str]]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(Chunk.id, Chunk.embedding, Chunk.text).join(Chunk.document)
                .where(Document.scope == scope, Document.status == "ready").order_by(Chunk.id))
            return [tuple(r) for r in rows]

    async def refresh(self, scope: str):
        """Open the scope's index, rebuilding it from SQL when it is missing, stale or corrupt."""
        from lm.index import open_or_rebuild

        rows = await self._scope_rows(scope)
        fingerprint = hashlib.sha256(np.asarray([r[0] for r in rows], dtype=np.int64).tobytes()).hexdigest()
        dim = self.encoder.dim

        def source():
            for chunk_id, blob, text in rows:
                yield chunk_id, np.frombuffer(blob, dtype=np.float32) if blob else self.encoder.encode([text])[0], text

        index = await asyncio.to_thread(open_or_rebuild, self.index_dir(scope), dim, fingerprint, source)
        self._indexes[scope] = index
        return index

    async def has_documents(self, scope: str) -> bool:
        async with self.sessions() as s:
            return bool(await q.list_documents(s, scope))

    async def search(self, scope: str, query: str, k: int | None = None) -> list[Passage]:
        """Hybrid (dense + BM25) retrieval within one scope only."""
        k = k or self.settings.documents.top_k
        index = await self.refresh(scope)
        qvec = (await asyncio.to_thread(self.encoder.encode, [query]))[0]
        hits = await asyncio.to_thread(index.search, qvec, query, k)
        if not hits:
            return []
        ids = [int(h[0]) for h in hits]
        async with self.sessions() as s:
            chunks = await q.chunks_by_ids(s, ids)
        scores = dict((int(i), float(sc)) for i, sc in hits)
        out = []
        for c in chunks:
            vec = np.frombuffer(c.embedding, dtype=np.float32) if c.embedding else self.encoder.encode([c.text])[0]
            out.append(Passage(c.id, c.document.name, c.page, c.heading, c.text, scores[c.id], float(vec @ qvec)))
        return out
