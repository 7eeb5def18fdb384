from dataclasses import dataclass
from datetime import datetime


class IndexUnavailable(Exception):
    """The vector index cannot answer now (server down, not built); the API turns it into a 503."""


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    score: float  # the fused score in hybrid mode, the side's own score otherwise
    dense: float | None = None  # cosine similarity
    lexical: float | None = None  # BM25 over the rows the caller may read


@dataclass(frozen=True)
class IndexFilter:
    """Metadata filters applied inside the search, beside the access scope (so ``top_k`` is still filled).

    ``modified_after`` is inclusive and ``modified_before`` exclusive: [after, before). A document without a
    modification time matches no date filter. None means "not filtered on this"."""

    source_ids: frozenset | None = None
    classifications: frozenset | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None

    @property
    def empty(self) -> bool:
        return self == IndexFilter()

    def describe(self) -> dict:
        """What the filter applies, as JSON (for the audit log): source ids, labels, ISO moments."""
        parts = {"source": sorted(self.source_ids) if self.source_ids is not None else None,
                 "classification": sorted(self.classifications) if self.classifications is not None else None,
                 "modified_after": self.modified_after.isoformat() if self.modified_after else None,
                 "modified_before": self.modified_before.isoformat() if self.modified_before else None}
        return {key: value for key, value in parts.items() if value is not None}

    @property
    def cache_key(self) -> tuple:
        return (
            tuple(sorted(self.source_ids)) if self.source_ids is not None else None,
            tuple(sorted(self.classifications)) if self.classifications is not None else None,
            self.modified_after.timestamp() if self.modified_after else None,
            self.modified_before.timestamp() if self.modified_before else None,
        )

    @classmethod
    def of(cls, source_ids=None, filters: "IndexFilter | None" = None) -> "IndexFilter":
        """The filter a search call asked for: ``filters``, narrowed by the older ``source_ids`` argument."""
        flt = filters or cls()
        if source_ids:
            wanted = frozenset(source_ids)
            merged = wanted if flt.source_ids is None else flt.source_ids & wanted
            flt = cls(merged, flt.classifications, flt.modified_after, flt.modified_before)
        return flt


class VectorIndex:
    """What every backend offers. Access filtering happens inside ``search`` (DESIGN invariant 5)."""

    name = "base"

    def search(self, vector, scope, top_k: int, source_ids=None, *, query: str = "", mode: str = "dense",
               alpha: float = 0.75, fusion: str = "relative_score", candidates: int = 100,
               filters: IndexFilter | None = None) -> list[SearchHit]:
        """Best rows the scope may read and ``filters`` (with ``source_ids``) let through: ``mode`` is hybrid,
        dense or lexical; see index/fusion.py. Ties are broken by chunk id, so a longer ``top_k`` extends a
        shorter one (pagination relies on it)."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Catch up with the database's IndexChange log."""
        raise NotImplementedError

    def persist(self) -> None:
        """Write what lets a new process start quickly (the embedded snapshot); nothing for a server."""

    def rebuild(self) -> int:
        """Reload every chunk from the database (no re-embedding); returns the number indexed."""
        raise NotImplementedError

    def stale_chunks(self) -> int:
        """Chunks whose vector was made by another embedding model (name or dimension) than EMBEDDING_MODEL: while
        there are any, dense scores would compare vectors of two models, and search refuses them."""
        raise NotImplementedError

    def chunk_ids(self) -> set[str]:
        raise NotImplementedError

    def status(self) -> dict:
        raise NotImplementedError
