"""The embedded index's approximate dense search: a faiss inverted-file index (IVF-Flat, inner product on unit
vectors = cosine) whose ids are the embedded index's row slots.

Why IVF and not HNSW (measured with bench/search.py --recall, README "Approximate search"): unfiltered both reach
recall@10 >= 0.97 against exact search, but with an ID selector letting through 10% or 1% of the vectors HNSW's
recall falls (0.92 and 0.38 at efSearch 64 on 100k vectors: the graph walk dead-ends among filtered-out nodes),
where IVF with nprobe raised by 1/f stays >= 0.98. IVF also removes vectors by id (``remove_ids``) and builds in
half the time; faiss's HNSW cannot remove (deleted rows would stay as tombstones until a rebuild). A refresh from
the IndexChange outbox therefore removes the changed documents' old slots and adds their new rows; nothing is
re-embedded.

Filtering happens inside the search: the allowed rows' slots become an ``IDSelectorBitmap`` in the search
parameters, so only allowed vectors are ever scored and ``k`` results come back from the allowed set. With a
selector letting through a share f of the vectors, ``nprobe`` is raised to nprobe / f (capped at nlist) so about as
many allowed vectors are scanned as unfiltered; below the measured cut-over (``worth_it``) exact numpy search over
the allowed rows is both faster and exact, and the embedded index uses that instead.
"""

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings


@dataclass(frozen=True)
class ApproxSettings:
    enabled: bool = True
    min_rows: int = 10_000  # no approximate index for a smaller corpus
    min_allowed: int = 5_000  # allowed rows below which exact search over them is used (measured)
    min_fraction: float = 0.05  # allowed share below which exact search is used (measured: nprobe / f nears nlist)
    nprobe: int = 32  # inverted lists visited unfiltered (recall@10 >= 0.97 measured at 10k and 100k)
    train_sample: int = 50_000


def approx_settings() -> ApproxSettings:
    """Defaults above; a test or an operator may override any with settings.INDEX_APPROX = {...}."""
    overrides = getattr(settings, "INDEX_APPROX", None) or {}
    return ApproxSettings(**overrides)


class ApproximateIndex:
    """faiss's OpenMP thread count is left alone: faiss and torch share one OpenMP runtime here, so setting it for
    faiss would also slow the embedding model (measured: torch.get_num_threads() fell from 2 to 1). A one-query IVF
    search runs on one thread anyway (faiss parallelises over queries)."""

    def __init__(self, index, config: ApproxSettings, trained_on: int):
        self.index = index
        self.config = config
        self.trained_on = trained_on
        self.lock = threading.Lock()  # faiss indexes are not safe to search while being changed

    @staticmethod
    def nlist_for(n: int) -> int:
        return max(16, int(4 * math.sqrt(max(n, 1))))

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, config: ApproxSettings) -> "ApproximateIndex":
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        nlist = cls.nlist_for(len(vectors))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors
        if len(vectors) > config.train_sample:
            pick = np.random.default_rng(0).choice(len(vectors), config.train_sample, replace=False)
            sample = vectors[np.sort(pick)]
        index.train(sample)
        index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index, config, len(vectors))

    @classmethod
    def load(cls, path: Path, config: ApproxSettings) -> "ApproximateIndex":
        import faiss

        index = faiss.read_index(str(path))
        return cls(index, config, int(index.ntotal))

    def save(self, path: Path) -> None:
        import os
        import tempfile

        import faiss

        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".faiss.tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def ids(self) -> np.ndarray:
        """Every id held, in no particular order (read from the inverted lists)."""
        import faiss

        lists = self.index.invlists
        parts = []
        for number in range(self.nlist):
            size = lists.list_size(number)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def needs_rebuild(self, current: int) -> bool:
        """The lists were trained on a corpus of a very different size: retrain for balanced lists."""
        return current > 2 * self.trained_on or current * 2 < self.trained_on

    def worth_it(self, allowed: int) -> bool:
        """Approximate beats exact for this many allowed rows (the cut-over measured by bench/search.py)."""
        if not self.ntotal:
            return False
        return allowed >= self.config.min_allowed and allowed / self.ntotal >= self.config.min_fraction

    def nprobe_for(self, fraction: float) -> int:
        return min(self.nlist, max(1, math.ceil(self.config.nprobe / max(min(fraction, 1.0), 1e-6))))

    def search(self, vector: np.ndarray, k: int, allowed_ids: np.ndarray | None, id_space: int,
               fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the best k vectors among ``allowed_ids`` (None: all), best first. ``id_space``: ids
        are below it (sizes the selector's bitmap)."""
        import faiss

        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        params = faiss.SearchParametersIVF()
        params.nprobe = self.nprobe_for(fraction if allowed_ids is not None else 1.0)
        if allowed_ids is not None:
            bits = np.zeros(id_space, dtype=bool)
            bits[allowed_ids] = True
            bitmap = np.packbits(bits, bitorder="little")
            selector = faiss.IDSelectorBitmap(id_space, faiss.swig_ptr(bitmap))
            params.sel = selector
        scores, ids = self.index.search(query, k, params=params)
        found = ids[0] >= 0
        return ids[0][found], np.round(scores[0][found], 6)  # as the exact path rounds: equal vectors tie

    def describe(self) -> dict:
        return {"kind": "faiss IVF-Flat", "vectors": self.ntotal, "nlist": self.nlist, "nprobe": self.config.nprobe,
                "min_allowed": self.config.min_allowed, "min_fraction": self.config.min_fraction}
