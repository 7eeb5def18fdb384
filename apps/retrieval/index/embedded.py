"""The one-machine index: exact cosine search over a numpy matrix and BM25 over a sparse term matrix, held in
each process and fused there.

Rows come from the database (invariant 1). Each process replays the IndexChange log to follow what workers
write; a snapshot under DATA_DIR/index makes start-up cheap and is rewritten after every sync. Access filtering
is a row mask computed from the scope before any score is taken (invariant 5), so ``top_k`` results come back
however small the readable share of the corpus is, and the lexical statistics cover only the readable rows.
Metadata filters (source, classification, modification time) narrow the same mask, from per-row arrays.

Large allowed sets are searched approximately (index/approx.py, faiss) with the mask passed into the search as an
ID selector; small ones exactly (see README "Approximate search" for the measured cut-over). Rows whose vector was
made by another embedding model (or has another dimension) than EMBEDDING_MODEL are indexed lexically only and
counted by ``stale_chunks``; search.py then refuses dense scoring until `manage.py reembed`.
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

from apps.compliance.labels import CLASSIFICATIONS
from apps.ingestion.embedding import get_embedder
from apps.retrieval.models import IndexChange
from apps.retrieval.outbox import compacted_through, outbox_head, synced_through

from ..lexical import bm25_scores, term_rows
from . import projection
from .approx import ApproximateIndex, approx_settings
from .base import IndexFilter, SearchHit, VectorIndex
from .fusion import fuse

SNAPSHOT_FORMAT = 3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocMeta:
    document_id: str
    source_id: int
    principals: frozenset
    classification: str = "internal"
    modified: float = float("nan")  # POSIX seconds; NaN when the source gave none


def _class_code(classification: str) -> int:
    return CLASSIFICATIONS.index(classification) if classification in CLASSIFICATIONS else -1


@dataclass
class _State:
    chunk_ids: np.ndarray  # str, one per row
    doc_codes: np.ndarray  # int64, one per row: key into docs
    vectors: np.ndarray  # float32, rows x dim, unit length
    tf: sp.csr_matrix  # term frequencies, rows x vocabulary
    lengths: np.ndarray  # float32 analyzed length of each row
    classes: np.ndarray = None  # int8: position in CLASSIFICATIONS of the row's document (-1 unknown)
    modified: np.ndarray = None  # float64: the document's modification time, POSIX seconds (NaN: none)
    current: np.ndarray = None  # bool: the vector is of EMBEDDING_MODEL (name and dimension); else zeros
    slots: np.ndarray = None  # int64: the row's id in the approximate index, never reused
    docs: dict = field(default_factory=dict)  # code -> DocMeta
    doc_code_of: dict = field(default_factory=dict)  # document id -> code
    seq: int = 0
    next_code: int = 0
    next_slot: int = 0
    version: int = 0

    def __post_init__(self):
        n = len(self.chunk_ids)
        if self.classes is None:
            self.classes = np.full(n, _class_code("internal"), dtype=np.int8)
        if self.modified is None:
            self.modified = np.full(n, np.nan, dtype=np.float64)
        if self.current is None:
            self.current = np.ones(n, dtype=bool)
        if self.slots is None:
            self.slots = np.arange(self.next_slot, self.next_slot + n, dtype=np.int64)
            self.next_slot += n

    @classmethod
    def empty(cls, dim: int, vocab_size: int = 0):
        return cls(np.zeros(0, dtype="U36"), np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32),
                   sp.csr_matrix((0, vocab_size), dtype=np.float32), np.zeros(0, dtype=np.float32))

    @cached_property
    def tf_csc(self) -> sp.csc_matrix:
        return self.tf.tocsc()

    @cached_property
    def id_rank(self) -> np.ndarray:
        """Each row's position in chunk-id order: the tiebreak that makes equal scores rank the same everywhere."""
        rank = np.empty(len(self.chunk_ids), dtype=np.int64)
        rank[np.argsort(self.chunk_ids, kind="stable")] = np.arange(len(self.chunk_ids))
        return rank

    @cached_property
    def row_of_slot(self) -> np.ndarray:
        """Row position of each approximate-index id (-1: no longer a row)."""
        rows = np.full(self.next_slot, -1, dtype=np.int64)
        rows[self.slots] = np.arange(len(self.slots))
        return rows

    @cached_property
    def stale(self) -> int:
        return int(len(self.current) - np.count_nonzero(self.current))


def _without(state: _State, document_ids):
    """(rows to keep, document metadata, document codes) of ``state`` without the given documents (None: all)."""
    if document_ids is None:
        return np.zeros(len(state.chunk_ids), dtype=bool), {}, {}
    keep = np.ones(len(state.chunk_ids), dtype=bool)
    docs_map, code_of = dict(state.docs), dict(state.doc_code_of)
    old_codes = [code_of.pop(str(d)) for d in document_ids if str(d) in code_of]
    for code in old_codes:
        docs_map.pop(code, None)
    if old_codes:
        keep &= ~np.isin(state.doc_codes, old_codes)
    return keep, docs_map, code_of


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
        self._approx: ApproximateIndex | None = None  # over the current rows' vectors, ids = _State.slots

    # --- loading -------------------------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return get_embedder().name

    @property
    def snapshot_path(self) -> Path:
        return self.directory / f"embedded-{self.model_name}.npz"

    @property
    def approx_path(self) -> Path:
        return self.directory / f"embedded-{self.model_name}.faiss"

    def _ensure_loaded(self) -> _State:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    state = self._load_snapshot()
                    from_snapshot = state is not None
                    state = state or self._build_from_db()
                    self._approx = self._load_approx(state) if from_snapshot else None
                    self._approx = self._approx or self._build_approx(state)
                    self._state = state
                    self._last_refresh = 0.0
                    if state.stale:
                        logger.warning("%d chunks carry vectors of another embedding model than %s: dense search is "
                                       "refused until `manage.py reembed` has run", state.stale, self.model_name)
        return self._state

    def _load_snapshot(self) -> _State | None:
        path = self.snapshot_path
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("model") != self.model_name or meta.get("format") != SNAPSHOT_FORMAT \
                        or meta.get("dimension") != self._dimension():
                    return None
                vocab = meta["vocab"]
                tf = sp.csr_matrix((data["tf_data"], data["tf_indices"], data["tf_indptr"]),
                                   shape=(len(data["chunk_ids"]), len(vocab)))
                state = _State(data["chunk_ids"], data["doc_codes"], data["vectors"], tf, data["lengths"],
                               classes=data["classes"], modified=data["modified"], current=data["current"],
                               slots=data["slots"], next_slot=int(meta["next_slot"]))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable index snapshot %s: %s", path, exc)
            return None
        self._vocab = {term: col for col, term in enumerate(vocab)}
        state.docs = {int(c): DocMeta(d, s, frozenset(p), k, float("nan") if m is None else m)
                      for c, d, s, p, k, m in meta["docs"]}
        state.doc_code_of = {m.document_id: c for c, m in state.docs.items()}
        state.seq = int(meta["seq"])
        state.next_code = max(state.docs, default=-1) + 1

        if state.seq < compacted_through():
            logger.info("index snapshot %s (outbox #%d) is older than the compacted outbox; building from the "
                        "database", path, state.seq)
            return None
        return state

    def _build_from_db(self) -> _State:
        seq = outbox_head()
        self._vocab = {}
        state = self._with_documents(_State.empty(self._dimension()), None)
        state.seq = seq
        return state

    def _dimension(self) -> int:
        return get_embedder().dimension

    def _with_documents(self, state: _State, document_ids) -> _State:
        """A new state with the given documents (None: all) reloaded from the database; the approximate index
        is brought along (rows gone removed by id, new rows added)."""
        docs = projection.documents(document_ids)
        keep, docs_map, code_of = _without(state, document_ids)
        next_code = state.next_code
        for key, doc in docs.items():
            code_of[key] = next_code
            docs_map[next_code] = DocMeta(key, doc.source_id, frozenset(doc.principals), doc.classification,
                                          doc.modified_at.timestamp() if doc.modified_at else float("nan"))
            next_code += 1
        dim = state.vectors.shape[1]
        zero = np.zeros(dim, dtype=np.float32)
        ids, codes, vectors, texts, current = [], [], [], [], []
        for chunk in projection.chunks(docs, every=document_ids is None, model=(self.model_name, dim)):
            ids.append(chunk.id)
            codes.append(code_of[chunk.document.id])
            ok = chunk.vector is not None and len(chunk.vector) == dim
            vectors.append(chunk.vector if ok else zero)  # another model's vector is never scored: lexical only
            current.append(ok)
            texts.append(chunk.text)
        new_vectors = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), dtype=np.float32)
        new_tf, new_lengths = term_rows(texts, self._vocab)
        kept_tf = state.tf[keep]
        kept_tf.resize((kept_tf.shape[0], len(self._vocab)))
        new_codes = np.array(codes, dtype=np.int64)
        new_slots = np.arange(state.next_slot, state.next_slot + len(ids), dtype=np.int64)
        new_current = np.array(current, dtype=bool)
        metas = [docs_map[c] for c in codes]
        new_state = _State(
            chunk_ids=np.concatenate([state.chunk_ids[keep], np.array(ids, dtype="U36")]),
            doc_codes=np.concatenate([state.doc_codes[keep], new_codes]),
            vectors=np.vstack([state.vectors[keep], new_vectors]),
            tf=sp.vstack([kept_tf, new_tf], format="csr", dtype=np.float32),
            lengths=np.concatenate([state.lengths[keep], new_lengths]),
            classes=np.concatenate([state.classes[keep],
                                    np.array([_class_code(m.classification) for m in metas], dtype=np.int8)]),
            modified=np.concatenate([state.modified[keep], np.array([m.modified for m in metas], dtype=np.float64)]),
            current=np.concatenate([state.current[keep], new_current]),
            slots=np.concatenate([state.slots[keep], new_slots]),
            docs=docs_map,
            doc_code_of=code_of,
            seq=state.seq,
            next_code=next_code,
            next_slot=state.next_slot + len(ids),
            version=state.version + 1,
        )
        if self._approx is not None and document_ids is not None:
            with self._approx.lock:
                self._approx.remove(state.slots[~keep & state.current])
                self._approx.add(new_vectors[new_current], new_slots[new_current])
        return new_state

    # --- the approximate index -----------------------------------------------------------------------------

    def _build_approx(self, state: _State) -> ApproximateIndex | None:
        """A new approximate index over the current rows, when the corpus is large enough to profit."""
        config = approx_settings()
        if not config.enabled or state.vectors.shape[0] < config.min_rows:
            return None
        started = time.perf_counter()
        approx = ApproximateIndex.build(state.vectors[state.current], state.slots[state.current], config)
        logger.info("approximate index over %d vectors built in %.1f s", approx.ntotal,
                    time.perf_counter() - started)
        return approx

    def _load_approx(self, state: _State) -> ApproximateIndex | None:
        config = approx_settings()
        if not config.enabled or not self.approx_path.exists():
            return None
        try:
            approx = ApproximateIndex.load(self.approx_path, config)
        except (OSError, RuntimeError, ValueError) as exc:
            logger.warning("ignoring unreadable approximate index %s: %s", self.approx_path, exc)
            return None
        # Written after the snapshot: a reader may meet a newer or older file than its snapshot. Only the exact
        # same set of ids is used; anything else is rebuilt from the snapshot's vectors.
        if approx.ntotal != int(np.count_nonzero(state.current)) or \
                not np.array_equal(np.sort(approx.ids()), np.sort(state.slots[state.current])):
            logger.info("approximate index %s does not match the snapshot; rebuilding it", self.approx_path)
            return None
        return approx

    # --- keeping current -----------------------------------------------------------------------------------

    def refresh(self) -> None:
        self._ensure_loaded()
        with self._lock:
            state = self._state
            changes = list(IndexChange.objects.filter(id__gt=state.seq).values_list("id", "document_id")[:50000])
            # Read after the outbox: rows this index had yet to replay may have been compacted away since it last
            # looked (removal and watermark commit together). Then only the database can say what changed.
            if state.seq < compacted_through():
                logger.warning("the index outbox was compacted past this index's position #%d; rebuilding from the "
                               "database", state.seq)
                self.rebuild()  # the lock is re-entrant; the fresh snapshot spares the next process the same
                self._last_refresh = time.monotonic()
                return
            if changes:
                new_state = self._with_documents(state, list({d for _, d in changes}))
                new_state.seq = changes[-1][0]
                if self._approx is None:
                    self._approx = self._build_approx(new_state)  # the corpus grew past the threshold
                elif self._approx.needs_rebuild(int(np.count_nonzero(new_state.current))):
                    self._approx = self._build_approx(new_state)
                self._state = new_state
                self._mask_cache.clear()
            self._last_refresh = time.monotonic()

    def refresh_if_due(self) -> None:
        """Refresh every INDEX_REFRESH_SECONDS, and at once when a sync has ended that this index has not caught up
        with (read-your-writes: `sync_source --wait`, then a search, finds what it wrote)."""
        if time.monotonic() - self._last_refresh >= settings.INDEX_REFRESH_SECONDS or self._behind_a_finished_sync():
            self.refresh()

    def _behind_a_finished_sync(self) -> bool:
        # One indexed query per search. Not the bare outbox head: during a sync it moves with every document, and
        # each refresh copies the whole matrix, so searches would pay that per document instead of per second.

        state = self._state
        return state is not None and synced_through() > state.seq

    def rebuild(self) -> int:
        with self._lock:
            self._approx = None
            state = self._build_from_db()
            self._approx = self._build_approx(state)
            self._state = state
            self._mask_cache.clear()
            self.save_snapshot()
            return len(self._state.chunk_ids)

    def persist(self) -> None:
        self.save_snapshot()

    def save_snapshot(self) -> Path:
        with self._lock:
            state = self._ensure_loaded()
            vocab = sorted(self._vocab, key=self._vocab.get)
            approx = self._approx
            self.directory.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": SNAPSHOT_FORMAT,
                "model": self.model_name,
                "dimension": int(state.vectors.shape[1]),
                "seq": state.seq,
                "next_slot": state.next_slot,
                "vocab": vocab,
                "docs": [[c, m.document_id, m.source_id, sorted(m.principals), m.classification,
                          None if np.isnan(m.modified) else m.modified] for c, m in state.docs.items()],
            }
            tf = state.tf
            # Write beside the target, then rename: a reader never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    np.savez(fh, chunk_ids=state.chunk_ids, doc_codes=state.doc_codes, vectors=state.vectors,
                             tf_data=tf.data, tf_indices=tf.indices, tf_indptr=tf.indptr, lengths=state.lengths,
                             classes=state.classes, modified=state.modified, current=state.current,
                             slots=state.slots, meta=np.array(json.dumps(meta)))
                os.replace(tmp, self.snapshot_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            if approx is not None:
                with approx.lock:
                    approx.save(self.approx_path)
            elif self.approx_path.exists():
                self.approx_path.unlink()
        return self.snapshot_path

    # --- searching -----------------------------------------------------------------------------------------

    def _allowed(self, state: _State, scope, flt: IndexFilter) -> "_Allowed":
        """The rows the scope may read and the filter lets through, as positions and as a mask, with their mean
        length; cached per scope and filter."""
        key = (state.version, scope.cache_key, flt.cache_key)
        allowed = self._mask_cache.get(key)
        if allowed is None:
            source_ids = flt.source_ids
            codes = [
                code for code, meta in state.docs.items()
                if scope.allows(meta.principals) and (source_ids is None or meta.source_id in source_ids)
            ]
            mask = np.isin(state.doc_codes, codes) if codes else np.zeros(len(state.doc_codes), dtype=bool)
            if flt.classifications is not None:
                mask &= np.isin(state.classes, [_class_code(c) for c in flt.classifications])
            if flt.modified_after is not None:
                mask &= state.modified >= flt.modified_after.timestamp()  # NaN (no date) never matches
            if flt.modified_before is not None:
                mask &= state.modified < flt.modified_before.timestamp()
            rows = np.flatnonzero(mask)
            everything = len(rows) == len(mask)
            avgdl = float(state.lengths[rows].mean()) if len(rows) else 0.0
            allowed = _Allowed(rows, None if everything else mask, everything, avgdl)
            if len(self._mask_cache) > 256:
                self._mask_cache.clear()
            self._mask_cache[key] = allowed
        return allowed

    def _dense_exact(self, state: _State, allowed: _Allowed, vector) -> np.ndarray:
        rows = allowed.rows
        if allowed.everything:
            return state.vectors @ vector
        if len(rows) * 2 > len(state.chunk_ids):
            return (state.vectors @ vector)[rows]  # cheaper than copying most of the matrix
        return state.vectors[rows] @ vector

    def _dense_approx(self, state: _State, approx, allowed: _Allowed, vector, depth: int) -> np.ndarray:
        """Scores aligned with allowed.rows: the approximate top ``depth`` set, -inf elsewhere."""
        # Rows of another model are not in the approximate index, so "everything" needs no selector.
        selector_slots = None if allowed.everything else state.slots[allowed.rows]
        with approx.lock:
            slots, scores = approx.search(vector, depth, selector_slots, state.next_slot,
                                          fraction=len(allowed.rows) / max(1, approx.ntotal))
        row_of_slot = state.row_of_slot
        inside = slots < len(row_of_slot)
        found = row_of_slot[slots[inside]]
        scores = scores[inside][found >= 0]
        found = found[found >= 0]
        dense = np.full(len(allowed.rows), -np.inf, dtype=np.float32)
        positions = np.searchsorted(allowed.rows, found)
        ok = (positions < len(allowed.rows)) & (allowed.rows[np.minimum(positions, len(allowed.rows) - 1)] == found)
        dense[positions[ok]] = scores[ok]
        return dense

    def uses_approximate(self, allowed_rows: int) -> bool:
        """Whether a search over this many allowed rows goes to the approximate index (the measured cut-over)."""
        approx = self._approx
        return approx is not None and approx.worth_it(allowed_rows)

    def search(self, vector, scope, top_k: int, source_ids=None, *, query: str = "", mode: str = "dense",
               alpha: float = 0.75, fusion: str = "relative_score", candidates: int = 100,
               filters: IndexFilter | None = None) -> list[SearchHit]:
        if scope.empty:
            return []
        self._ensure_loaded()
        self.refresh_if_due()
        state, approx = self._state, self._approx
        allowed = self._allowed(state, scope, IndexFilter.of(source_ids, filters))
        rows = allowed.rows
        if not len(rows):
            return []
        tiebreak = state.id_rank[rows]
        dense = lexical = None
        if mode in ("dense", "hybrid"):
            vector = np.asarray(vector, dtype=np.float32)
            depth = top_k if mode == "dense" else max(candidates, top_k)
            if approx is not None and approx.worth_it(len(rows)):
                dense = self._dense_approx(state, approx, allowed, vector, depth)
            else:
                dense = self._dense_exact(state, allowed, vector)
                # Equal vectors can differ in the last bit depending on where BLAS blocks the rows; rounded,
                # they tie, and ties rank by chunk id.
                dense = np.round(dense, 6)
                if state.stale:
                    dense = np.where(state.current[rows], dense, -np.inf).astype(np.float32)
        if mode in ("lexical", "hybrid"):
            lexical = bm25_scores(query, self._vocab, state.tf_csc, state.lengths,
                                  None if allowed.everything else rows, allowed.mask, allowed.avgdl)
        ranked = fuse(dense, lexical, top_k, mode=mode, alpha=alpha, fusion=fusion, candidates=candidates,
                      tiebreak=tiebreak)
        hits = []
        for i, score in ranked:
            dense_score = None
            if dense is not None:
                dense_score = float(dense[i])
                if not np.isfinite(dense_score):  # outside the approximate candidates: its exact cosine
                    dense_score = float(state.vectors[rows[i]] @ vector) if state.current[rows[i]] else None
            hits.append(SearchHit(str(state.chunk_ids[rows[i]]), score, dense=dense_score,
                                  lexical=None if lexical is None else float(lexical[i])))
        return hits

    # --- inspection ----------------------------------------------------------------------------------------

    def chunk_ids(self) -> list[str]:
        return [str(c) for c in self._ensure_loaded().chunk_ids]

    def stale_chunks(self) -> int:
        state = self._ensure_loaded()
        self.refresh_if_due()
        return self._state.stale if self._state is not None else state.stale

    def status(self) -> dict:
        state, approx = self._state, self._approx
        return {
            "backend": self.name,
            "loaded": state is not None,
            "chunks": int(len(state.chunk_ids)) if state else None,
            "vocabulary": len(self._vocab) if state else None,
            "seq": state.seq if state else None,
            "snapshot": str(self.snapshot_path) if self.snapshot_path.exists() else None,
            "database": connection.vendor,
            "embedding_model": self.model_name,
            "stale_vectors": state.stale if state else None,
            "approximate": approx.describe() if approx is not None else None,
        }
