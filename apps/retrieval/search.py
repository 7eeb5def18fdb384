"""Search: scope, embed, search inside the index with the scope applied, cite, audit."""

import hashlib
import hmac
import time
import uuid
from dataclasses import asdict, dataclass

from django.conf import settings

from apps.accounts.access import access_scope
from apps.compliance.audit import client_ip, record
from apps.ingestion.models import Chunk, Document, Source
from ragsite.errors import FieldError

from .embedder import get_embedder
from .index import get_index
from .index.fusion import FUSIONS, MODES

FILTER_KEYS = ("source",)


class SearchError(FieldError):
    pass


@dataclass
class SearchResult:
    chunk_id: str
    document_id: str
    document_title: str
    source: str
    uri: str
    heading: str
    page: int | None
    text: str
    score: float
    explain: dict | None = None


def as_dict(result: SearchResult) -> dict:
    """The API's shape of a result (also printed by `manage.py search --json`)."""
    data = asdict(result)
    if data["explain"] is None:
        del data["explain"]
    return data


def _source_ids(filters: dict) -> set[int] | None:
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise SearchError(f"filters.{sorted(unknown)[0]}", f"unknown filter; known: {', '.join(FILTER_KEYS)}")
    value = filters.get("source")
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
        raise SearchError("filters.source", "must be a source name or id, or a list of them")
    names = [v for v in values if isinstance(v, str)]
    ids = {v for v in values if isinstance(v, int)}
    ids |= set(Source.objects.filter(name__in=names).values_list("pk", flat=True))
    return ids or {-1}  # a filter naming no known source matches nothing


def query_fingerprint(query: str) -> str:
    """Keyed hash of the query for the audit log: proves what was asked without storing personal data in an
    append-only table that erasure could never clean."""
    return hmac.new(settings.SECRET_KEY.encode(), query.encode(), hashlib.sha256).hexdigest()


def search(user, query: str, *, top_k: int = 10, filters: dict | None = None, mode: str = "hybrid",
           alpha: float | None = None, fusion: str = "relative_score", explain: bool = False, request=None):
    """Ranked chunks the user may read. Returns (results, took_ms).

    ``mode``: hybrid (default), dense or lexical; ``alpha``: the dense side's weight in hybrid mode (default
    settings.SEARCH_HYBRID_ALPHA); ``fusion``: relative_score (default) or rrf."""
    started = time.perf_counter()
    query = (query or "").strip()
    if not query:
        raise SearchError("query", "must not be empty")
    if len(query) > settings.SEARCH_MAX_QUERY_CHARS:
        raise SearchError("query", f"must be at most {settings.SEARCH_MAX_QUERY_CHARS} characters")
    if not 1 <= top_k <= settings.SEARCH_MAX_TOP_K:
        raise SearchError("top_k", f"must be between 1 and {settings.SEARCH_MAX_TOP_K}")
    if mode not in MODES:
        raise SearchError("mode", f"must be one of {', '.join(MODES)}")
    if fusion not in FUSIONS:
        raise SearchError("fusion", f"must be one of {', '.join(FUSIONS)}")
    alpha = settings.SEARCH_HYBRID_ALPHA if alpha is None else alpha
    if not 0 <= alpha <= 1:
        raise SearchError("alpha", "must be between 0 and 1")
    source_ids = _source_ids(filters or {})
    scope = access_scope(user)
    hits = []
    if not scope.empty:
        vector = get_embedder().encode_query(query) if mode != "lexical" else None
        hits = get_index().search(vector, scope, top_k, source_ids, query=query, mode=mode, alpha=alpha,
                                  fusion=fusion)
    # Second gate against a revocation newer than the index's last refresh: fail closed.
    readable = Document.objects.readable_by(scope)
    chunks = (
        Chunk.objects.select_related("document__source")
        .filter(document__in=readable)
        .in_bulk([h.chunk_id for h in hits])
    )
    results = []
    for hit in hits:
        chunk = chunks.get(uuid.UUID(hit.chunk_id))
        if chunk is None:  # deleted or revoked since the index last refreshed
            continue
        document = chunk.document
        results.append(
            SearchResult(
                chunk_id=str(chunk.pk),
                document_id=str(document.pk),
                document_title=document.title,
                source=document.source.name,
                uri=document.uri,
                heading=chunk.heading,
                page=chunk.page,
                text=chunk.text,
                score=round(hit.score, 6),
                explain={"mode": mode, "alpha": alpha if mode == "hybrid" else None, "fusion": fusion,
                         "dense": hit.dense, "lexical": hit.lexical} if explain else None,
            )
        )
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    record(
        "search",
        actor=user,
        ip=client_ip(request),
        data={
            "query_hmac": query_fingerprint(query),
            "top_k": top_k,
            "mode": mode,
            "filters": filters or {},
            "chunk_ids": [r.chunk_id for r in results],
        },
    )
    return results, took_ms
