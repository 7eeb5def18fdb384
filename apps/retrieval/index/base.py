from dataclasses import dataclass


class IndexUnavailable(Exception):
    """The vector index cannot answer now (server down, not built); the API turns it into a 503."""


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    score: float  # the fused score in hybrid mode, the side's own score otherwise
    dense: float | None = None  # cosine similarity
    lexical: float | None = None  # BM25 over the rows the caller may read


class VectorIndex:
    """What every backend offers. Access filtering happens inside ``search`` (DESIGN invariant 5)."""

    name = "base"

    def search(self, vector, scope, top_k: int, source_ids=None, *, query: str = "", mode: str = "dense",
               alpha: float = 0.75, fusion: str = "relative_score", candidates: int = 100) -> list[SearchHit]:
        """Best rows the scope may read: ``mode`` is hybrid, dense or lexical; see index/fusion.py."""
        raise NotImplementedError

    def refresh(self) -> None:
        """Catch up with the database's IndexChange log."""
        raise NotImplementedError

    def persist(self) -> None:
        """Write what lets a new process start quickly (the embedded snapshot); nothing for a server."""

    def rebuild(self) -> int:
        """Reload every chunk from the database (no re-embedding); returns the number indexed."""
        raise NotImplementedError

    def chunk_ids(self) -> set[str]:
        raise NotImplementedError

    def status(self) -> dict:
        raise NotImplementedError
