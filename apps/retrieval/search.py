"""Search: scope, embed, search inside the index with the scope applied, cite, audit."""

import hashlib
import hmac
import time
from dataclasses import dataclass, field, fields
from datetime import datetime

import numpy as np
from django.conf import settings

from apps.accounts.access import access_scope
from apps.compliance.audit import record
from apps.compliance.labels import CLASSIFICATIONS
from apps.ingestion.embedding import get_embedder
from apps.ingestion.models import Source
from ragsite.errors import FieldError

from .filter_dates import parse_moment
from .index import IndexFilter, IndexUnavailable, get_index
from .index.fusion import rocchio
from .readable import readable_chunk_rows

FILTER_KEYS = ("source", "classification", "modified_after", "modified_before")
# Pages are slices of one ranking of at most this many results: offset + top_k may not exceed it. It equals the
# fusion depth (each side's top 100 are fused), so every page is cut from the same fused list and pages never
# overlap or skip a result.
SEARCH_MAX_WINDOW = 100


class SearchError(FieldError):
    pass


class DenseUnavailable(IndexUnavailable):
    """Dense search was asked for while the index holds vectors of another embedding model (503)."""


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
    """The API's shape of a result (also printed by `manage.py search --json`). Built field by field: asdict()
    deep-copies every value, ~30 µs a result."""
    data = {f.name: getattr(result, f.name) for f in _RESULT_FIELDS}
    if data["explain"] is None:
        del data["explain"]
    else:
        data["explain"] = dict(data["explain"])
    return data


_RESULT_FIELDS = fields(SearchResult)


@dataclass
class SearchPage:
    results: list
    took_ms: float
    offset: int = 0
    next_offset: int | None = None
    served_mode: str = "hybrid"
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """The API's response body (also printed by `manage.py search --json`)."""
        body = {"results": [as_dict(r) for r in self.results], "took_ms": self.took_ms,
                "offset": self.offset, "next_offset": self.next_offset, "served_mode": self.served_mode}
        if self.warnings:
            body["warnings"] = self.warnings
        return body


def parse_filters(filters) -> IndexFilter:
    """The request's ``filters`` object as an IndexFilter; a bad value raises SearchError naming its field."""
    if filters is None:
        return IndexFilter()
    if not isinstance(filters, dict):
        raise SearchError("filters", "must be an object")
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise SearchError(f"filters.{sorted(unknown)[0]}", f"unknown filter; known: {', '.join(FILTER_KEYS)}")
    source_ids = _source_ids(filters)
    classifications = _classifications(filters.get("classification"))
    after = _moment("modified_after", filters.get("modified_after"))
    before = _moment("modified_before", filters.get("modified_before"))
    if after and before and after >= before:
        raise SearchError("filters.modified_before", "must be later than filters.modified_after")
    return IndexFilter(frozenset(source_ids) if source_ids is not None else None, classifications, after, before)


def _classifications(value) -> frozenset | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise SearchError("filters.classification", f"must be a list of: {', '.join(CLASSIFICATIONS)}")
    unknown = [v for v in values if v not in CLASSIFICATIONS]
    if unknown:
        raise SearchError("filters.classification",
                          f"unknown classification {unknown[0]!r}; known: {', '.join(CLASSIFICATIONS)}")
    return frozenset(values)


def _moment(name: str, value) -> datetime | None:
    """An ISO 8601 date (midnight UTC) or date-time (UTC when it names no offset): filter_dates.parse_moment."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or not 0 < len(value) <= 64:
            raise ValueError(value)
        return parse_moment(value)
    except ValueError:
        raise SearchError(f"filters.{name}", "must be an ISO 8601 date or date-time, like 2024-05-01 or "
                                             "2024-05-01T12:00:00Z") from None
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable UTC moment (was a 500)
        raise SearchError(f"filters.{name}", "is out of range once converted to UTC") from None


def _source_ids(filters: dict) -> set[int] | None:
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


def _result(hit, row, how: dict | None) -> SearchResult:
    """A hit the re-check let through, with its citation fields (and, when asked, how it was scored)."""
    document_id, title, source_name, uri, heading, page, text = row
    explain = {**how, "dense": hit.dense, "lexical": hit.lexical} if how is not None else None
    return SearchResult(chunk_id=hit.chunk_id, document_id=str(document_id), document_title=title,
                        source=source_name, uri=uri, heading=heading, page=page, text=text,
                        score=round(hit.score, 6), explain=explain)


def _served_mode(index, mode: str) -> tuple[str, list]:
    """The mode actually served, and why it differs: lexical-only while the index holds another model's vectors."""
    if mode == "lexical":
        return mode, []
    stale = index.stale_chunks()
    if not stale:
        return mode, []
    reason = (f"{stale} chunks carry vectors of another embedding model than {get_embedder().name!r} "
              f"(dimension {get_embedder().dimension}); run `manage.py reembed`")
    if mode == "dense":
        raise DenseUnavailable(f"dense search is off until the vectors are re-embedded: {reason}")
    return "lexical", [f"served lexical-only: {reason}"]


def feedback_vector(index, vector, scope, query: str, *, alpha: float, fusion: str, filters):
    """The query vector after Rocchio pseudo-relevance feedback (index/fusion.py ``rocchio``) from the top
    SEARCH_HYBRID_PRF_DEPTH chunks of a first hybrid ranking with the same scope, filters, alpha and fusion.

    Done here, on our side, so it is the same on both backends: the feedback vectors are read from the database
    (the source of truth), only chunks of the current embedding model count, and, like the results, only chunks
    the scope may read now (a revocation newer than the index's last refresh must not steer the query either)."""
    first = index.search(vector, scope, settings.SEARCH_HYBRID_PRF_DEPTH, query=query, mode="hybrid", alpha=alpha,
                         fusion=fusion, filters=filters)
    if not first or scope.empty:
        return vector
    embedder = get_embedder()
    stored = readable_chunk_rows(scope, [h.chunk_id for h in first], "embedding",
                                 embedding_model=(embedder.name, embedder.dimension))
    feedback = [np.frombuffer(e, dtype="<f4") for (e,) in stored]
    return rocchio(vector, feedback) if feedback else vector


def _readable_chunks(scope, flt: IndexFilter, chunk_ids: list[str]) -> dict[str, tuple]:
    """The returned chunks' citation fields, read in one query that is also the second gate: only chunks whose
    document the scope may read now and that pass the filters now (readable_chunk_rows). Keyed by chunk id (str)."""
    rows = readable_chunk_rows(scope, chunk_ids, "citation", flt=flt)
    return {str(row[0]): row[1:] for row in rows}


def search(user, query: str, *, top_k: int = 10, filters: IndexFilter | None = None, mode: str = "hybrid",
           alpha: float | None = None, fusion: str = "relative_score", explain: bool = False, ip: str | None = None):
    """Ranked chunks the user may read. Returns (results, took_ms); see search_page for the parameters."""
    page = search_page(user, query, top_k=top_k, filters=filters, mode=mode, alpha=alpha, fusion=fusion,
                       explain=explain, ip=ip)
    return page.results, page.took_ms


def search_page(user, query: str, *, top_k: int = 10, offset: int = 0, filters: IndexFilter | None = None,
                mode: str = "hybrid", alpha: float | None = None, fusion: str = "relative_score",
                explain: bool = False, ip: str | None = None) -> SearchPage:
    """One page of the ranked chunks the user may read. The values are valid: SearchRequestSerializer checked them
    (the API, answer/ and `manage.py search` all go through it).

    ``mode``: hybrid, dense or lexical (MODES); ``alpha``: the dense side's weight in hybrid mode (None:
    settings.SEARCH_HYBRID_ALPHA); ``fusion``: FUSIONS; ``filters``: parse_filters' IndexFilter; ``offset``/``top_k``:
    the page, offset + top_k <= SEARCH_MAX_WINDOW; ``ip``: the caller's address, for the audit. While the index holds
    vectors of another embedding model than EMBEDDING_MODEL (after a model change, before `manage.py reembed`),
    dense scores would compare vectors of two models: hybrid is then served lexical-only (``served_mode`` and a
    warning say so) and dense raises DenseUnavailable (503)."""
    started = time.perf_counter()
    alpha = settings.SEARCH_HYBRID_ALPHA if alpha is None else alpha
    flt = filters or IndexFilter()
    scope = access_scope(user)
    index = get_index()
    served_mode, warnings = _served_mode(index, mode)
    window = offset + top_k
    hits = []
    if not scope.empty:
        vector = get_embedder().encode_query(query) if served_mode != "lexical" else None
        if served_mode == "hybrid" and settings.SEARCH_HYBRID_PRF_DEPTH > 0:
            vector = feedback_vector(index, vector, scope, query, alpha=alpha, fusion=fusion, filters=flt)
        # One more than the page, to know whether a next page exists (never deeper than the fusion depth).
        hits = index.search(vector, scope, min(window + 1, SEARCH_MAX_WINDOW), query=query, mode=served_mode,
                            alpha=alpha, fusion=fusion, filters=flt)
    more = len(hits) > window
    hits = hits[offset:window]
    # Second gate against a revocation newer than the index's last refresh: fail closed. The filters are
    # re-checked too, so a relabelled or re-dated document is never returned against its filter.
    rows = _readable_chunks(scope, flt, [h.chunk_id for h in hits])
    how = {"mode": served_mode, "alpha": alpha if served_mode == "hybrid" else None, "fusion": fusion}
    results = [_result(hit, rows[hit.chunk_id], how if explain else None) for hit in hits if hit.chunk_id in rows]
    took_ms = round((time.perf_counter() - started) * 1000, 2)
    record(
        "search",
        actor=user,
        ip=ip,
        data={
            "query_hmac": query_fingerprint(query),
            "top_k": top_k,
            "offset": offset,
            "mode": mode,
            "served_mode": served_mode,
            "filters": flt.describe(),
            "chunk_ids": [r.chunk_id for r in results],
        },
    )
    return SearchPage(results, took_ms, offset, window if more else None, served_mode, warnings)
