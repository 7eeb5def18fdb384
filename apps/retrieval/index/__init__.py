"""Vector index backends. The database is the source of truth; an index is a projection of its chunks."""

import logging
from functools import lru_cache

from django.conf import settings

from .base import IndexFilter, IndexUnavailable, SearchHit, VectorIndex

__all__ = ["IndexFilter", "IndexUnavailable", "SearchHit", "VectorIndex", "get_index", "refresh_after_commit"]

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def get_index() -> VectorIndex:
    if settings.VECTOR_BACKEND == "embedded":
        from .embedded import EmbeddedIndex

        return EmbeddedIndex(settings.DATA_DIR / "index")
    if settings.VECTOR_BACKEND == "weaviate":
        from .weaviate import WeaviateIndex

        return WeaviateIndex.from_settings()
    raise IndexUnavailable(f"unknown VECTOR_BACKEND={settings.VECTOR_BACKEND!r}; use 'embedded' or 'weaviate'")


def refresh_after_commit(sender=None, reason="", **kwargs) -> None:
    """Receiver of ingestion's ``writes_committed``: bring this process's index up to date now rather than at the
    next search. The outbox keeps the changes if the index cannot take them (a Weaviate that is down catches up on
    its next refresh)."""
    try:
        index = get_index()
        index.refresh()
        index.persist()
    except IndexUnavailable as exc:
        logger.warning("%s: vector index not updated now (%s); the outbox keeps the changes", reason, exc)
