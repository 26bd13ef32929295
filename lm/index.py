"""Per-scope retrieval index on disk: FAISS inner product over unit vectors + BM25 (bm25s), the two halves the
product's hybrid ranking (lm.rank) draws its candidates from.

One `HybridIndex` per scope (a chat's documents), in its own directory, keyed by chunk id (int64):

    idx = open_or_rebuild(scope_dir(root, "chat-42"), 384, fingerprint_ids(sql_ids), rows_from_sql)
    idx.add(ids, vectors, texts); idx.remove(ids); idx.save()
    idx.search(query_vec, "query text", k=20)  # -> [(chunk_id, score), ...] best first

SQL is the source of truth; these files are a cache of it. `save` writes every file through a temp file
and `os.replace`, the manifest (count, dim, version, id-set fingerprint, file checksums) last, so a crash
or a concurrent writer is caught by `load` as `IndexCorrupt` and `open_or_rebuild` rebuilds from the rows.
bm25s cannot delete documents, so the BM25 half is rebuilt from the stored texts after a removal (and
lazily after `load`): at our sizes (thousands of chunks per scope) that takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import bm25s
import faiss
import numpy as np

from lm.rank import bm25_tokens, rrf_fuse, score_fuse

log = logging.getLogger(__name__)

INDEX_VERSION = 1
MANIFEST = "manifest.json"
DENSE_FILE = "dense.faiss"
TEXTS_FILE = "texts.json"
MODES = ("rrf", "score", "dense", "bm25")  # the first two fuse the last two (lm.rank)
_SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class IndexLoadError(RuntimeError):
    """The index on disk cannot be used as is; `open_or_rebuild` rebuilds it from the source of truth."""


class IndexStale(IndexLoadError):
    """Missing, from another version or dimension, or built from a different set of chunks."""


class IndexCorrupt(IndexLoadError):
    """A file is unreadable, truncated, or does not match the manifest."""


# ------------------------------------------------------------------------------------------- helpers


def fingerprint_ids(ids: Iterable[int]) -> str:
    """A checksum of a set of chunk ids (order and duplicates do not matter)."""
    arr = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()[:32]


def scope_dir(root: Path, scope: str) -> Path:
    """The directory of one scope's index; the name must be a plain file name (no path tricks)."""
    if not _SCOPE_RE.match(scope) or ".." in scope:
        raise ValueError(f"bad index scope name {scope!r}: use letters, digits, '_', '-', '.' (at most 100)")
    return Path(root) / scope


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -------------------------------------------------------------------------------------------- index


class HybridIndex:
    """Dense (FAISS IndexIDMap2 over IndexFlatIP) + sparse (BM25) retrieval over one scope's chunks."""

    def __init__(self, dir: Path, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, not {dim}")
        self.dir = Path(dir)
        self.dim = dim
        self._dense = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._texts: dict[int, str] = {}
        self._bm25: bm25s.BM25 | None = None  # built lazily from _texts; None = out of date
        self._bm25_ids = np.zeros(0, dtype=np.int64)  # BM25 doc row -> chunk id
        self._lock = threading.RLock()
        self.rebuilt_reason: str | None = None  # set by open_or_rebuild when it had to rebuild

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def ids(self) -> np.ndarray:
        with self._lock:
            return np.array(sorted(self._texts), dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        with self._lock:
            return fingerprint_ids(self._texts)

    # ---------------------------------------------------------------------------------- mutation

    def add(self, ids: Sequence[int], vectors: np.ndarray, texts: Sequence[str]) -> None:
        """Add chunks; ids must be new to this index (remove first to replace). Bad input changes nothing."""
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {tuple(vecs.shape)}")
        if not (len(ids_arr) == len(vecs) == len(texts)):
            raise ValueError(f"ids, vectors and texts differ in length: {len(ids_arr)}, {len(vecs)}, {len(texts)}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinity")
        if len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("ids contain duplicates")
        if any(not isinstance(t, str) for t in texts):
            raise ValueError("texts must be strings")
        if len(ids_arr) == 0:
            return
        with self._lock:
            present = [int(i) for i in ids_arr if int(i) in self._texts]
            if present:
                raise ValueError(f"ids already in the index: {present[:10]}{' ...' if len(present) > 10 else ''}")
            vecs = vecs.copy()
            faiss.normalize_L2(vecs)  # inner product of unit vectors = cosine
            self._dense.add_with_ids(vecs, ids_arr)
            for i, t in zip(ids_arr, texts, strict=True):
                self._texts[int(i)] = t
            self._bm25 = None

    def remove(self, ids: Iterable[int]) -> int:
        """Remove chunks by id (unknown ids are ignored); returns how many were removed."""
        ids_arr = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))
        with self._lock:
            ids_arr = ids_arr[[int(i) in self._texts for i in ids_arr]] if len(ids_arr) else ids_arr
            if len(ids_arr) == 0:
                return 0
            removed = self._dense.remove_ids(faiss.IDSelectorBatch(ids_arr))
            for i in ids_arr:
                del self._texts[int(i)]
            self._bm25 = None  # bm25s cannot delete: rebuilt on the next BM25 search
            return int(removed)

    # ------------------------------------------------------------------------------------ search

    def search(self, query_vec: np.ndarray | None, query_text: str | None, k: int = 20, mode: str = "rrf",
               weights: tuple[float, float] = (1.0, 1.0), rrf_k: int = 60,
               candidates: int | None = None) -> list[tuple[int, float]]:
        """Top-k (chunk_id, score), best first.

        mode "dense" scores by cosine, "bm25" by BM25; "rrf" and "score" fuse both (lm.rank): by reciprocal
        rank (constant rrf_k) or by min-max normalised scores; weights = (dense, bm25). Each retriever
        contributes its top `candidates` (default max(50, 3k)) to the fusion.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        if len(weights) != 2 or min(weights) < 0:
            raise ValueError(f"weights must be two non-negative numbers (dense, bm25), not {weights!r}")
        if mode != "bm25" and query_vec is None:
            raise ValueError(f"mode {mode!r} needs a query vector")
        if mode != "dense" and query_text is None:
            raise ValueError(f"mode {mode!r} needs a query text")
        n_cand = max(candidates or max(50, 3 * k), k)
        with self._lock:
            if not self._texts:
                return []
            dense = self._search_dense(query_vec, n_cand) if mode != "bm25" else []
            sparse = self._search_bm25(query_text or "", n_cand) if mode != "dense" else []
        if mode == "dense":
            return dense[:k]
        if mode == "bm25":
            return sparse[:k]
        if mode == "rrf":
            return rrf_fuse([[i for i, _ in dense], [i for i, _ in sparse]], weights, rrf_k)[:k]
        return score_fuse([dense, sparse], weights)[:k]

    def _search_dense(self, query_vec: np.ndarray, n: int) -> list[tuple[int, float]]:
        q = np.ascontiguousarray(np.asarray(query_vec, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.dim:
            raise ValueError(f"query vector must have {self.dim} values, got {q.shape[1]}")
        if not np.isfinite(q).all():
            raise ValueError("query vector contains NaN or infinity")
        q = q.copy()
        faiss.normalize_L2(q)
        scores, ids = self._dense.search(q, min(n, self._dense.ntotal))  # (1, n) each
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i != -1]

    def _search_bm25(self, text: str, n: int) -> list[tuple[int, float]]:
        bm25 = self._ensure_bm25()
        token_ids = bm25.get_tokens_ids(bm25_tokens(text))
        if not token_ids:
            return []  # no query word occurs in this scope
        scores = bm25.get_scores_from_ids(token_ids)  # (n_docs,)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.lexsort((self._bm25_ids[top], -scores[top]))]  # by score, ties by chunk id
        return [(int(self._bm25_ids[j]), float(scores[j])) for j in top if scores[j] > 0]

    def _ensure_bm25(self) -> bm25s.BM25:
        if self._bm25 is None:
            ids = np.array(sorted(self._texts), dtype=np.int64)
            bm25 = bm25s.BM25()
            bm25.index([bm25_tokens(self._texts[int(i)]) for i in ids], show_progress=False)
            self._bm25, self._bm25_ids = bm25, ids
        return self._bm25

    # ------------------------------------------------------------------------------- persistence

    def save(self) -> None:
        """Write the index to its directory: data files first, the manifest last, each atomically."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            ids = sorted(self._texts)
            dense = faiss.serialize_index(self._dense).tobytes()
            texts = json.dumps({"ids": ids, "texts": [self._texts[i] for i in ids]}, ensure_ascii=False).encode()
            _write_atomic(self.dir / DENSE_FILE, dense)
            _write_atomic(self.dir / TEXTS_FILE, texts)
            manifest = {"version": INDEX_VERSION, "dim": self.dim, "count": len(ids),
                        "fingerprint": fingerprint_ids(ids),
                        "files": {DENSE_FILE: _sha256(dense), TEXTS_FILE: _sha256(texts)}}
            _write_atomic(self.dir / MANIFEST, json.dumps(manifest, indent=1).encode())

    @classmethod
    def load(cls, dir: Path, dim: int | None = None) -> HybridIndex:
        """Load a saved index; raises IndexStale (missing, other version/dim) or IndexCorrupt."""
        dir = Path(dir)
        mpath = dir / MANIFEST
        if not mpath.is_file():
            raise IndexStale(f"no index at {dir} ({MANIFEST} is missing)")
        try:
            manifest = json.loads(mpath.read_text())
            version, mdim, count = manifest["version"], int(manifest["dim"]), int(manifest["count"])
            fingerprint, checksums = manifest["fingerprint"], manifest["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise IndexCorrupt(f"{mpath}: unreadable manifest ({e})") from e
        if version != INDEX_VERSION:
            raise IndexStale(f"{dir}: index version {version}, this code reads version {INDEX_VERSION}")
        if dim is not None and mdim != dim:
            raise IndexStale(f"{dir}: index has dim {mdim}, expected {dim}")
        blobs = {}
        for name in (DENSE_FILE, TEXTS_FILE):
            path = dir / name
            if not path.is_file():
                raise IndexCorrupt(f"{dir}: {name} is missing")
            blobs[name] = path.read_bytes()
            if _sha256(blobs[name]) != checksums.get(name):
                raise IndexCorrupt(f"{path}: checksum does not match the manifest (partial write or damage)")
        try:
            # already the concrete class; (a downcast_index proxy would dangle once this one is freed)
            dense = faiss.deserialize_index(np.frombuffer(blobs[DENSE_FILE], dtype=np.uint8))
            payload = json.loads(blobs[TEXTS_FILE])
            ids, texts = [int(i) for i in payload["ids"]], payload["texts"]
        except Exception as e:  # faiss raises RuntimeError, json ValueError, a wrong layout KeyError/TypeError
            raise IndexCorrupt(f"{dir}: cannot read index files ({e})") from e
        if not isinstance(dense, faiss.IndexIDMap2) or dense.d != mdim:
            raise IndexCorrupt(f"{dir}/{DENSE_FILE}: not an IndexIDMap2 of dim {mdim}")
        dense_ids = faiss.vector_to_array(dense.id_map)
        if not (dense.ntotal == len(ids) == len(texts) == count) or set(dense_ids.tolist()) != set(ids):
            raise IndexCorrupt(f"{dir}: files disagree (dense {dense.ntotal}, texts {len(ids)}, manifest {count})")
        if fingerprint_ids(ids) != fingerprint:
            raise IndexCorrupt(f"{dir}: the chunk ids do not match the manifest's fingerprint")
        idx = cls(dir, mdim)
        idx._dense = dense
        idx._texts = dict(zip(ids, texts, strict=True))
        return idx


def open_or_rebuild(dir: Path, dim: int, fingerprint: str,
                    rows: Callable[[], Iterable[tuple[int, np.ndarray, str]]],
                    batch_size: int = 1024) -> HybridIndex:
    """Load the index at `dir`, or rebuild it from `rows()` (the source of truth) and save it.

    It is rebuilt when missing, corrupt, of another dim/version, or when `fingerprint` (computed by the
    caller with `fingerprint_ids` over its current chunk ids) differs from the saved one. `rows` is only
    called for a rebuild; it yields (chunk_id, vector, text). `index.rebuilt_reason` says why, or None.
    """
    try:
        idx = HybridIndex.load(dir, dim)
        if idx.fingerprint == fingerprint:
            return idx
        reason = f"stale: fingerprint {idx.fingerprint} on disk, {fingerprint} expected"
    except IndexCorrupt as e:  # damage is worth a warning; a missing or outdated index is routine
        reason = f"{type(e).__name__}: {e}"
        log.warning("index %s is damaged (%s); rebuilding it from the database", dir, e)
    except IndexLoadError as e:
        reason = f"{type(e).__name__}: {e}"
    log.debug("building index %s (%s)", dir, reason)
    idx = HybridIndex(dir, dim)
    batch: list[tuple[int, np.ndarray, str]] = []
    for row in rows():
        batch.append(row)
        if len(batch) >= batch_size:
            _add_rows(idx, batch)
            batch = []
    _add_rows(idx, batch)
    if idx.fingerprint != fingerprint:
        # the source changed while we read it, or the caller fingerprints differently: the next open rebuilds
        log.warning("index %s rebuilt from rows whose ids do not match fingerprint %s", dir, fingerprint)
    idx.save()
    idx.rebuilt_reason = reason
    return idx


def _add_rows(idx: HybridIndex, rows: list[tuple[int, np.ndarray, str]]) -> None:
    if rows:
        idx.add([r[0] for r in rows], np.stack([np.asarray(r[1], dtype=np.float32) for r in rows]),
                [r[2] for r in rows])


__all__ = ["HybridIndex", "IndexLoadError", "IndexStale", "IndexCorrupt", "open_or_rebuild", "fingerprint_ids",
           "scope_dir"]
