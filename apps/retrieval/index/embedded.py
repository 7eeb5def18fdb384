"""The one-machine index: exact cosine search over a numpy matrix and BM25 over a sparse term matrix, held in
each process and fused there.

Rows come from the database (invariant 1). Each process replays the IndexChange log to follow what workers
write; a snapshot under DATA_DIR/index makes start-up cheap and is rewritten after every sync. Access filtering
is a row mask computed from the scope before any score is taken (invariant 5), so ``top_k`` results come back
however small the readable share of the corpus is, and the lexical statistics cover only the readable rows.
"""

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from django.conf import settings
from django.db import connection

from ..lexical import bm25_scores, term_rows
from .base import SearchHit, VectorIndex
from .fusion import fuse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocMeta:
    document_id: str
    source_id: int
    principals: frozenset


@dataclass
class _State:
    chunk_ids: np.ndarray  # str, one per row
    doc_codes: np.ndarray  # int64, one per row: key into docs
    vectors: np.ndarray  # float32, rows x dim, unit length
    tf: sp.csr_matrix  # term frequencies, rows x vocabulary
    lengths: np.ndarray  # float32 analyzed length of each row
    docs: dict = field(default_factory=dict)  # code -> DocMeta
    doc_code_of: dict = field(default_factory=dict)  # document id -> code
    seq: int = 0
    next_code: int = 0
    version: int = 0

    @classmethod
    def empty(cls, dim: int, vocab_size: int = 0):
        return cls(np.zeros(0, dtype="U36"), np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32),
                   sp.csr_matrix((0, vocab_size), dtype=np.float32), np.zeros(0, dtype=np.float32))

    @cached_property
    def tf_csc(self) -> sp.csc_matrix:
        return self.tf.tocsc()


@dataclass(frozen=True)
class _Allowed:
    rows: np.ndarray
    mask: np.ndarray | None  # None when every row is allowed
    everything: bool
    avgdl: float


class EmbeddedIndex(VectorIndex):
    name = "embedded"

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._state: _State | None = None
        self._vocab: dict[str, int] = {}  # only grows, so an older state's columns stay valid
        self._last_refresh = 0.0
        self._mask_cache: dict = {}

    # --- loading -------------------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        from apps.retrieval.embedder import get_embedder

        return get_embedder().name

    @property
    def snapshot_path(self) -> Path:
        return self.directory / f"embedded-{self.model_name}.npz"

    def _ensure_loaded(self) -> _State:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    self._state = self._load_snapshot() or self._build_from_db()
                    self._last_refresh = 0.0
        return self._state

    def _load_snapshot(self) -> _State | None:
        path = self.snapshot_path
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("model") != self.model_name or meta.get("format") != 2:
                    return None
                vocab = meta["vocab"]
                tf = sp.csr_matrix((data["tf_data"], data["tf_indices"], data["tf_indptr"]),
                                   shape=(len(data["chunk_ids"]), len(vocab)))
                state = _State(data["chunk_ids"], data["doc_codes"], data["vectors"], tf, data["lengths"])
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable index snapshot %s: %s", path, exc)
            return None
        self._vocab = {term: col for col, term in enumerate(vocab)}
        state.docs = {int(c): DocMeta(d, s, frozenset(p)) for c, d, s, p in meta["docs"]}
        state.doc_code_of = {m.document_id: c for c, m in state.docs.items()}
        state.seq = int(meta["seq"])
        state.next_code = max(state.docs, default=-1) + 1
        return state

    def _build_from_db(self) -> _State:
        from apps.retrieval.models import IndexChange

        seq = IndexChange.objects.order_by("-id").values_list("id", flat=True).first() or 0
        self._vocab = {}
        state = self._with_documents(_State.empty(self._dimension()), None)
        state.seq = seq
        return state

    def _dimension(self) -> int:
        from apps.retrieval.embedder import get_embedder

        return get_embedder().dimension

    def _with_documents(self, state: _State, document_ids) -> _State:
        """A new state with the given documents (None: all) reloaded from the database."""
        from apps.ingestion.chunking import passage_text
        from apps.ingestion.models import Chunk, Document, DocumentAccess

        docs = Document.objects.all()
        if document_ids is not None:
            docs = docs.filter(pk__in=document_ids)
        doc_rows = list(docs.values_list("id", "source_id", "title"))
        titles = {str(d): t for d, _, t in doc_rows}
        principals: dict = {}
        access = DocumentAccess.objects.filter(document_id__in=[d for d, _, _ in doc_rows])
        for doc_id, principal in access.values_list("document_id", "principal").iterator(chunk_size=5000):
            principals.setdefault(str(doc_id), set()).add(principal)

        keep = np.ones(len(state.chunk_ids), dtype=bool)
        docs_map, code_of = dict(state.docs), dict(state.doc_code_of)
        if document_ids is None:
            keep[:] = False
            docs_map, code_of = {}, {}
        else:
            old_codes = [code_of.pop(str(d)) for d in document_ids if str(d) in code_of]
            for code in old_codes:
                docs_map.pop(code, None)
            if old_codes:
                keep &= ~np.isin(state.doc_codes, old_codes)

        next_code = state.next_code
        for doc_id, source_id, _ in doc_rows:
            key = str(doc_id)
            code_of[key] = next_code
            docs_map[next_code] = DocMeta(key, source_id, frozenset(principals.get(key, ())))
            next_code += 1

        chunks = Chunk.objects.filter(embedding_model=self.model_name)
        if document_ids is not None:
            chunks = chunks.filter(document_id__in=document_ids)
        ids, codes, vectors, texts = [], [], [], []
        rows = chunks.values_list("id", "document_id", "embedding", "heading", "text")
        for chunk_id, doc_id, blob, heading, text in rows.iterator(chunk_size=2000):
            key = str(doc_id)
            code = code_of.get(key)
            if code is None:
                continue  # document appeared after we listed documents; the next refresh picks it up
            ids.append(str(chunk_id))
            codes.append(code)
            vectors.append(np.frombuffer(bytes(blob), dtype="<f4"))
            texts.append(passage_text(titles[key], heading, text))
        dim = state.vectors.shape[1]
        new_vectors = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), dtype=np.float32)
        new_tf, new_lengths = term_rows(texts, self._vocab)
        kept_tf = state.tf[keep]
        kept_tf.resize((kept_tf.shape[0], len(self._vocab)))
        return _State(
            chunk_ids=np.concatenate([state.chunk_ids[keep], np.array(ids, dtype="U36")]),
            doc_codes=np.concatenate([state.doc_codes[keep], np.array(codes, dtype=np.int64)]),
            vectors=np.vstack([state.vectors[keep], new_vectors]),
            tf=sp.vstack([kept_tf, new_tf], format="csr", dtype=np.float32),
            lengths=np.concatenate([state.lengths[keep], new_lengths]),
            docs=docs_map,
            doc_code_of=code_of,
            seq=state.seq,
            next_code=next_code,
            version=state.version + 1,
        )

    # --- keeping current -----------------------------------------------------------------------------------

    def refresh(self) -> None:
        from apps.retrieval.models import IndexChange

        self._ensure_loaded()
        with self._lock:
            state = self._state
            changes = list(IndexChange.objects.filter(id__gt=state.seq).values_list("id", "document_id")[:50000])
            if changes:
                new_state = self._with_documents(state, list({d for _, d in changes}))
                new_state.seq = changes[-1][0]
                self._state = new_state
                self._mask_cache.clear()
            self._last_refresh = time.monotonic()

    def refresh_if_due(self) -> None:
        if time.monotonic() - self._last_refresh >= settings.INDEX_REFRESH_SECONDS:
            self.refresh()

    def rebuild(self) -> int:
        with self._lock:
            self._state = self._build_from_db()
            self._mask_cache.clear()
            self.save_snapshot()
            return len(self._state.chunk_ids)

    def persist(self) -> None:
        self.save_snapshot()

    def save_snapshot(self) -> Path:
        with self._lock:
            state = self._ensure_loaded()
            vocab = sorted(self._vocab, key=self._vocab.get)
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": 2,
            "model": self.model_name,
            "seq": state.seq,
            "vocab": vocab,
            "docs": [[c, m.document_id, m.source_id, sorted(m.principals)] for c, m in state.docs.items()],
        }
        tf = state.tf
        # Write beside the target, then rename: a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, chunk_ids=state.chunk_ids, doc_codes=state.doc_codes, vectors=state.vectors,
                         tf_data=tf.data, tf_indices=tf.indices, tf_indptr=tf.indptr, lengths=state.lengths,
                         meta=np.array(json.dumps(meta)))
            os.replace(tmp, self.snapshot_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.snapshot_path

    # --- searching -----------------------------------------------------------------------------------------

    def _allowed(self, state: _State, scope, source_ids) -> "_Allowed":
        """The rows the scope may read, as positions and as a mask, with their mean length; cached per scope."""
        key = (state.version, scope.cache_key, tuple(sorted(source_ids)) if source_ids else None)
        allowed = self._mask_cache.get(key)
        if allowed is None:
            codes = [
                code for code, meta in state.docs.items()
                if scope.allows(meta.principals) and (not source_ids or meta.source_id in source_ids)
            ]
            mask = np.isin(state.doc_codes, codes) if codes else np.zeros(len(state.doc_codes), dtype=bool)
            rows = np.flatnonzero(mask)
            everything = len(rows) == len(mask)
            avgdl = float(state.lengths[rows].mean()) if len(rows) else 0.0
            allowed = _Allowed(rows, None if everything else mask, everything, avgdl)
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = allowed
        return allowed

    def search(self, vector, scope, top_k: int, source_ids=None, *, query: str = "", mode: str = "dense",
               alpha: float = 0.75, fusion: str = "relative_score", candidates: int = 100) -> list[SearchHit]:
        if scope.empty:
            return []
        self._ensure_loaded()
        self.refresh_if_due()
        state = self._state
        allowed = self._allowed(state, scope, set(source_ids or ()))
        rows = allowed.rows
        if not len(rows):
            return []
        dense = lexical = None
        if mode in ("dense", "hybrid"):
            vector = np.asarray(vector, dtype=np.float32)
            if allowed.everything:
                dense = state.vectors @ vector
            elif len(rows) * 2 > len(state.chunk_ids):
                dense = (state.vectors @ vector)[rows]  # cheaper than copying most of the matrix
            else:
                dense = state.vectors[rows] @ vector
        if mode in ("lexical", "hybrid"):
            lexical = bm25_scores(query, self._vocab, state.tf_csc, state.lengths,
                                  None if allowed.everything else rows, allowed.mask, allowed.avgdl)
        ranked = fuse(dense, lexical, top_k, mode=mode, alpha=alpha, fusion=fusion, candidates=candidates)
        return [
            SearchHit(
                str(state.chunk_ids[rows[i]]),
                score,
                dense=None if dense is None else float(dense[i]),
                lexical=None if lexical is None else float(lexical[i]),
            )
            for i, score in ranked
        ]

    # --- inspection ----------------------------------------------------------------------------------------

    def chunk_ids(self) -> list[str]:
        return [str(c) for c in self._ensure_loaded().chunk_ids]

    def status(self) -> dict:
        state = self._state
        return {
            "backend": self.name,
            "loaded": state is not None,
            "chunks": int(len(state.chunk_ids)) if state else None,
            "vocabulary": len(self._vocab) if state else None,
            "seq": state.seq if state else None,
            "snapshot": str(self.snapshot_path) if self.snapshot_path.exists() else None,
            "database": connection.vendor,
        }
