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
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.db import document_queries
from bot.db.sources import Forgotten, forget_document
from bot.db.tables import Document
from bot.documents.chunk import chunk_document, sentence_windows
from bot.documents.parse import DocumentError, ParsedDocument, parse_document
from bot.services.compute import in_own_thread, release_freed_memory
from bot.services.work_leases import Leases, leases_for
from bot.telegram import texts
from bot.text.evidence import Evidence, Passage, select
from lm import hub
from lm.rank import BASELINES, hybrid_candidates, hybrid_scores, rank, window_cosines, word_idf

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]  # (stage, fraction done)
STORE_BATCH = 256  # chunks embedded and stored at a time during an ingest
WINDOW_GROUP = 4096  # sentence windows embedded (and packed into float16) at a time during an ingest


def chat_scope(chat_id: int) -> str:
    return f"chat:{chat_id}"


@dataclass
class Ingested:
    document: Document
    chunks: int
    pages: int | None
    duplicate: bool = False


class KnowledgeBase:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], leases: Leases | None = None):
        self.settings = settings
        self.sessions = sessions
        self.leases = leases or leases_for(settings, sessions)
        self._encoder = None
        self._indexes: dict[str, tuple[int, object]] = {}  # scope -> (its version in SQL when built, index)
        self._idfs: dict[str, tuple[str, dict[str, float]]] = {}  # scope -> (fingerprint, idf)
        self._lock = threading.Lock()  # the encoder and the index files are used from worker threads

    # ---- the encoder ---------------------------------------------------------------------------

    @property
    def encoder(self):
        with self._lock:
            if self._encoder is None:
                from lm.encoder import Encoder  # lazy: loads torch, seconds at start-up

                self._encoder = Encoder.load(hub.resolve(self.settings.documents.encoder, self.settings.cache_dir))
            return self._encoder

    def chunk_limit(self) -> int:
        """Chunk size in encoder tokens: what the settings ask for, never beyond the encoder's window."""
        return min(self.settings.documents.chunk_tokens, self.encoder.max_text_tokens)

    # ---- ingest --------------------------------------------------------------------------------

    async def ingest(self, scope: str, data: bytes, filename: str, mime: str | None = None,
                     chat_id: int | None = None, progress: Progress | None = None,
                     user_id: int | None = None, stop: Callable[[], None] | None = None) -> Ingested:
        """Parse (in a child process), chunk, embed and index one file (uploaded by `user_id`, when known);
        nothing stays stored on failure. Chunks are stored a batch at a time under a document marked
        "indexing" (bot.db.document_queries), which nothing reads until it is ready.

        `stop` is called between steps (and between embedding batches) and raises to end the ingest there,
        deleting what was stored of it: /cancel and shutdown (bot.services.long_jobs).

        Raises bot.documents.parse.DocumentError for a bad file. A file already in the scope (same
        sha256) is not indexed twice: the existing document is returned with duplicate=True.
        """
        sha = hashlib.sha256(data).hexdigest()
        async with self.sessions() as s:
            existing = await document_queries.find_document_by_sha(s, scope, sha)
        if existing is not None:
            return Ingested(existing, existing.chunk_count, existing.pages, duplicate=True)
        report = progress or (lambda stage, frac: None)
        stop = stop or (lambda: None)
        report("parsing", 0.0)
        docs = self.settings.documents
        parsed: ParsedDocument = await asyncio.to_thread(
            parse_document, data, filename, mime, **docs.parse_limits())
        stop()
        report("chunking", 0.05)
        chunks = await asyncio.to_thread(
            chunk_document, parsed, self.encoder.count_tokens, self.chunk_limit(), docs.chunk_overlap_tokens)
        if not chunks:
            raise DocumentError("empty", texts.nothing_to_index(parsed.name))
        stop()
        async with self.sessions() as s:
            try:
                document = await document_queries.begin_document(
                    s, scope=scope, name=parsed.name, mime=mime or parsed.kind, sha256=sha, size_bytes=len(data),
                    chat_id=chat_id, user_id=user_id, pages=parsed.pages, lease=self.leases.lease())
            except document_queries.DuplicateDocumentError as dup:  # the same file arrived twice at once
                return Ingested(dup.existing, dup.existing.chunk_count, dup.existing.pages, duplicate=True)
        try:
            await self._store_chunks(document.id, chunks, report, stop)
            async with self.sessions() as s:
                document = await document_queries.finish_document(s, document.id)
        except BaseException:  # failed, cancelled or stopped: nothing of it stays
            await self._discard(document)
            raise
        report("indexing", 0.97)
        await self.refresh(scope)
        report("done", 1.0)
        return Ingested(document, document.chunk_count, parsed.pages)

    async def _store_chunks(self, document_id: int, chunks: list, report: Progress,
                            stop: Callable[[], None]) -> None:
        """Embed and store a document's chunks a batch at a time (STORE_BATCH chunks and their sentence
        windows), so a 20 MB upload's 400,000 window vectors are never all in memory at once."""
        size = self.settings.documents.window_sentences
        # the windows are cut twice (here only to count them, for the progress line) rather than kept: a 20 MB
        # upload's 350,000 window strings would stay in memory for the whole ingest
        total = sum(1 + (len(chunk_windows(c.text, size)) if size else 0) for c in chunks)
        done = 0
        for start in range(0, len(chunks), STORE_BATCH):
            batch = chunks[start:start + STORE_BATCH]
            windows = [chunk_windows(c.text, size) for c in batch] if size else []
            count = len(batch) + sum(len(ws) for ws in windows)

            def embedded(fraction: float, base=done, count=count) -> None:  # in the encoder's thread
                stop()
                report("embedding", 0.1 + 0.85 * (base + fraction * count) / total)

            vectors, blobs = await in_own_thread(embed_chunks, self.encoder, [c.text for c in batch], windows,
                                                 embedded)
            stop()
            rows = [document_queries.NewChunk(text=c.text, token_count=c.token_count, page=c.page, heading=c.heading,
                                              embedding=v.tobytes(), window_embeddings=blob)
                    for c, v, blob in zip(batch, vectors, blobs, strict=True)]
            async with self.sessions() as s:
                await document_queries.add_chunks(s, document_id, start, rows)
            if self.leases.shared:  # with no heartbeat (`docent ingest`), each batch keeps the document ours
                await self.leases.renew()
            del vectors, blobs, rows
            release_freed_memory()
            done += count

    async def _discard(self, document: Document) -> None:
        try:
            async with self.sessions() as s:
                await document_queries.discard_document(s, document.id)
        except Exception:  # the next start's discard_unfinished deletes it; the ingest's own error matters more
            log.exception("could not delete the unfinished document %s", document.id)

    async def discard_unfinished(self, scope: str | None = None) -> list[str]:
        """Delete the documents (of `scope`, or all) a dead process was indexing (with replicas: whose lease
        expired, never a live replica's upload in progress); their names."""
        async with self.sessions() as s:
            names = await document_queries.discard_unfinished(s, scope, self.leases.lease(),
                                                              self.leases.expired_before())
        if names:
            log.warning("deleted %d documents left half-indexed by an earlier run: %s", len(names), names)
        return names

    async def forget(self, scope: str, name_or_number: str, *, requester_id: int | None = None,
                     any_document: bool = True) -> Forgotten | None:
        """Delete a document from SQL, marking every turn that drew on it forgotten, then from the scope's index.

        Without `any_document` only its uploader may (bot.db.sources.forget_document raises NotAllowedToForget).
        """
        async with self.sessions() as s:
            forgotten = await forget_document(s, scope, name_or_number, requester_id=requester_id,
                                              any_document=any_document)
        if forgotten is not None:
            await self.refresh(scope)
        return forgotten

    async def documents(self, scope: str) -> list[Document]:
        async with self.sessions() as s:
            return await document_queries.list_documents(s, scope)

    # ---- the per-scope index ---------------------------------------------------------------------

    def index_dir(self, scope: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scope)
        return self.settings.data_dir / "indexes" / f"{safe}-{hashlib.sha1(scope.encode()).hexdigest()[:8]}"

    async def chunk_texts(self, scope: str) -> list[str]:
        """The texts of the scope's (ready) chunks, by chunk id."""
        async with self.sessions() as s:
            return [text for _, _, text in await document_queries.ready_chunk_rows(s, scope)]

    async def refresh(self, scope: str):
        """Open the scope's index, rebuilding it from SQL when it is missing, stale or corrupt.

        Every search calls this, so that an upload or a /forget on any replica is seen before the next answer:
        the index in memory is used while the scope's version in SQL (bot.db.tables.ScopeVersion, one row) is
        the one it was built at. Else the chunk ids are read: the fingerprint is lm.index's own, so an index on
        disk that matches SQL is loaded, not rebuilt. The version is read first: a change committed after it
        leaves the index tagged older than SQL, to be checked again at the next search.
        """
        # lazy: 0.3 s of imports (measured), wanted only once a chat has documents
        from lm.index import fingerprint_ids, open_or_rebuild

        async with self.sessions() as s:
            version = await document_queries.scope_version(s, scope)
            cached_version, cached = self._indexes.get(scope, (None, None))
            if cached is not None and cached_version == version:
                return cached
            fingerprint = fingerprint_ids(await document_queries.ready_chunk_ids(s, scope))
        if cached is not None and cached.fingerprint == fingerprint:
            self._indexes[scope] = (version, cached)
            return cached
        await self._fill_windows(scope)
        async with self.sessions() as s:
            rows = await document_queries.ready_chunk_rows(s, scope)
        dim = self.encoder.dim

        def source():
            for chunk_id, blob, text in rows:
                yield chunk_id, np.frombuffer(blob, dtype=np.float32) if blob else self.encoder.encode([text])[0], text

        index = await asyncio.to_thread(open_or_rebuild, self.index_dir(scope), dim, fingerprint, source)
        self._indexes[scope] = (version, index)
        return index

    async def _fill_windows(self, scope: str) -> int:
        """Embed the sentence windows of the scope's chunks stored without them (ingested before migration
        0004, or while window_sentences was 0), so that old and new documents are ranked alike; returns how
        many chunks were filled."""
        size = self.settings.documents.window_sentences
        if not size:
            return 0
        async with self.sessions() as s:
            missing = await document_queries.chunks_without_windows(s, scope)
        if not missing:
            return 0
        log.info("embedding sentence windows of %d chunks in %s", len(missing), scope)
        windows = [chunk_windows(text, size) for _, text in missing]
        blobs = await in_own_thread(embed_windows, self.encoder, windows)
        async with self.sessions() as s:
            await document_queries.set_window_embeddings(
                s, [(chunk_id, blob) for (chunk_id, _), blob in zip(missing, blobs, strict=True)])
        return len(missing)

    async def has_documents(self, scope: str) -> bool:
        async with self.sessions() as s:
            return await document_queries.has_documents(s, scope)

    async def search(self, scope: str, query: str, k: int | None = None, *, mode: str = "hybrid",
                     query_vec: np.ndarray | None = None) -> list[Passage]:
        """The best k passages within one scope only, best first.

        mode "hybrid" is the bot's retrieval: BM25 and dense candidates, fused with the cosine of each chunk's
        best sentence window, then re-ranked by where the question's words occur in it (lm.rank.hybrid_scores).
        "rrf", "dense" and "bm25" are the baselines `docent eval retrieval` compares it with (lm.rank.rank).
        `query_vec`: the query's embedding, when the caller has it already (the eval encodes each question once
        for every mode).
        """
        if mode not in SEARCH_MODES:
            raise ValueError(f"search mode must be one of {', '.join(SEARCH_MODES)}, not {mode!r}")
        docs = self.settings.documents
        k = k or docs.top_k
        index = await self.refresh(scope)
        if query_vec is None:
            query_vec = (await in_own_thread(self.encoder.encode, [query]))[0]
        if mode == "hybrid":
            ids, bm25 = await asyncio.to_thread(hybrid_candidates, index, query_vec, query, max(k, docs.candidates))
        else:
            hits = await asyncio.to_thread(rank, index, query_vec, query, k, mode)
            ids = [int(i) for i, _ in hits]
        if not ids:
            return []
        async with self.sessions() as s:
            chunks = await document_queries.chunks_by_ids(s, ids)
        cosine, windows = {}, {}
        for c in chunks:
            vec = np.frombuffer(c.embedding, dtype=np.float32) if c.embedding else self.encoder.encode([c.text])[0]
            cosine[c.id] = float(vec @ query_vec)
            windows[c.id] = window_cosines(c.window_embeddings, query_vec)
        if mode == "hybrid":
            window = {i: None if w is None else float(w.max()) for i, w in windows.items()}
            idf = await self._idf(scope, index)
            scores = hybrid_scores(query, cosine, window, bm25, {c.id: c.text for c in chunks}, idf, docs)
        else:
            scores = {int(i): float(sc) for i, sc in hits}
        best = sorted((c for c in chunks if c.id in scores), key=lambda c: (-scores[c.id], c.id))[:k]
        return [Passage(c.id, c.document.name, c.page, c.heading, c.text, scores[c.id], cosine[c.id],
                        closest_window(c.text, windows[c.id], docs.window_sentences)) for c in best]

    async def evidence(self, scope: str, question: str, passages: list[Passage], n: int) -> list[Evidence]:
        """The n sentences of the passages that best match the question (bot.text.evidence), best first."""
        if not passages:
            return []
        idf = await self._idf(scope, await self.refresh(scope))
        return await in_own_thread(select, question, passages, self.encoder.encode, idf, n)

    async def _idf(self, scope: str, index) -> dict[str, float]:
        """BM25 idf of every word in the scope, cached until the scope's chunks change."""
        cached = self._idfs.get(scope)
        if cached is not None and cached[0] == index.fingerprint:
            return cached[1]
        idf = await asyncio.to_thread(word_idf, await self.chunk_texts(scope))
        self._idfs[scope] = (index.fingerprint, idf)
        return idf


SEARCH_MODES = ("hybrid", *BASELINES)


def chunk_windows(text: str, size: int) -> list[str]:
    """The windows embedded for one chunk: its runs of `size` sentences, or its whole text when no sentence
    can be cut from it (so every chunk stores at least one and is never filled in again)."""
    return sentence_windows(text, size) or [text]


def embed_chunks(encoder, texts: list[str], windows: list[list[str]], progress: Callable[[float], None],
                 batch_size: int = 16) -> tuple[np.ndarray, list[bytes | None]]:
    """(N, dim) float32 embeddings of the chunks' texts, and each chunk's window vectors as float16 bytes
    (None for every chunk when `windows` is empty). Batches of 16: MiniLM's attention scores for 32 texts of
    256 tokens take 100 MB per layer."""
    total = len(texts) + sum(len(ws) for ws in windows)
    vectors = encoder.encode(texts, batch_size, lambda done, _n: progress(done / total))
    if not windows:
        return vectors, [None] * len(texts)
    return vectors, embed_windows(encoder, windows, lambda done: progress((len(texts) + done) / total), batch_size)


def embed_windows(encoder, windows: list[list[str]], progress: Callable[[int], None] | None = None,
                  batch_size: int = 16) -> list[bytes]:
    """Each chunk's window vectors as float16 bytes, embedded a group of chunks at a time and packed at once: a
    20 MB upload has some 400,000 windows, whose float32 vectors alone would take 600 MB. `progress(done)`
    counts windows."""
    blobs: list[bytes] = []
    start, embedded = 0, 0
    while start < len(windows):
        end, count = start, 0
        while end < len(windows) and (end == start or count + len(windows[end]) <= WINDOW_GROUP):
            count += len(windows[end])
            end += 1
        step = None if progress is None else (lambda done, _n, base=embedded: progress(base + done))
        vecs = encoder.encode([w for ws in windows[start:end] for w in ws], batch_size, step)
        blobs.extend(window_blobs(windows[start:end], vecs))
        start, embedded = end, embedded + count
    return blobs


def window_blobs(windows: list[list[str]], vectors: np.ndarray) -> list[bytes]:
    """Each chunk's window vectors as float16 (W, dim) bytes; `vectors` holds every chunk's, in order."""
    ends = np.cumsum([len(ws) for ws in windows], dtype=int)
    return [vectors[end - len(ws):end].astype(np.float16).tobytes()
            for ws, end in zip(windows, ends, strict=True)]


def closest_window(text: str, cosines: np.ndarray | None, size: int) -> str:
    """The text of the window with the highest cosine; "" without windows, or when the stored windows were
    cut with another window size than `size` now asks for."""
    if cosines is None or not size:
        return ""
    texts = chunk_windows(text, size)
    return texts[int(cosines.argmax())] if len(texts) == len(cosines) else ""
