"""Vector index backends. The database is the source of truth; an index is a projection of its chunks."""

from functools import lru_cache

from django.conf import settings

from .base import IndexFilter, IndexUnavailable, SearchHit, VectorIndex

__all__ = ["IndexFilter", "IndexUnavailable", "SearchHit", "VectorIndex", "get_index"]


@lru_cache(maxsize=1)
def get_index() -> VectorIndex:
    if settings.VECTOR_BACKEND == "embedded":
        from .embedded import EmbeddedIndex

        return EmbeddedIndex(settings.DATA_DIR / "index")
    if settings.VECTOR_BACKEND == "weaviate":
        from .weaviate import WeaviateIndex

        return WeaviateIndex.from_settings()
    raise IndexUnavailable(f"unknown VECTOR_BACKEND={settings.VECTOR_BACKEND!r}; use 'embedded' or 'weaviate'")
