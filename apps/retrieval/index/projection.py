"""What an index projects from the database, read the same way for every backend: each document's searchable
metadata and readers, each chunk's searchable text and vector, and the one definition of a stale chunk (a vector of
another embedding model than the one in use: indexed for BM25 only, never scored densely, until `manage.py reembed`
replaces it)."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db.models import Q

from apps.ingestion.chunking import passage_text
from apps.ingestion.embedding import get_embedder
from apps.ingestion.models import Chunk, Document, DocumentAccess


@dataclass(frozen=True)
class ProjectedDocument:
    id: str
    source_id: int
    title: str
    content_type: str
    classification: str
    modified_at: datetime | None
    principals: tuple[str, ...]  # sorted


@dataclass(frozen=True)
class ProjectedChunk:
    id: str
    document: ProjectedDocument
    heading: str
    text: str  # what is searched: the passage as embedded (title and heading path included)
    vector: np.ndarray | None  # None: stale (another model's vector)


def current_model() -> tuple[str, int]:
    """(name, dimension) of the embedding model in use: a chunk's vector is current when it carries both."""
    embedder = get_embedder()
    return embedder.name, embedder.dimension


def stale_filter(model: tuple[str, int] | None = None) -> Q:
    """Chunks whose vector is not of the model in use (a Q over Chunk)."""
    name, dim = model or current_model()
    return ~Q(embedding_model=name, embedding_dim=dim)


def stale_chunks():
    return Chunk.objects.filter(stale_filter())


def documents(document_ids=None) -> dict[str, ProjectedDocument]:
    """The given documents (None: every one) as the index sees them, keyed by id (str); ids with no row are left out
    (deleted documents: the caller removes their chunks)."""
    rows = Document.objects.all()
    if document_ids is not None:
        rows = rows.filter(pk__in=list(document_ids))
    rows = list(rows.values_list("id", "source_id", "title", "content_type", "classification", "modified_at"))
    principals: dict[str, list] = {}
    access = DocumentAccess.objects.filter(document_id__in=[r[0] for r in rows])
    for doc_id, principal in access.values_list("document_id", "principal").iterator(chunk_size=5000):
        principals.setdefault(str(doc_id), []).append(principal)
    return {
        str(d): ProjectedDocument(str(d), s, t, c, k, m, tuple(sorted(principals.get(str(d), ()))))
        for d, s, t, c, k, m in rows
    }


def chunks(docs: dict[str, ProjectedDocument], *, every: bool = False, model: tuple[str, int] | None = None,
           ordered: bool = False) -> Iterator[ProjectedChunk]:
    """The chunks of ``docs`` (``documents()``'s result), streamed; ``every``: ``docs`` holds every document, so
    the chunks are read without an id list. A chunk of a document not in ``docs`` (written after the documents were
    read) is skipped: the next refresh takes it in. ``ordered``: by document and ordinal."""
    name, dim = model or current_model()
    rows = Chunk.objects.all() if every else Chunk.objects.filter(document_id__in=list(docs))
    if ordered:
        rows = rows.order_by("document_id", "ordinal")
    rows = rows.values_list("id", "document_id", "embedding", "heading", "text", "embedding_model", "embedding_dim")
    for chunk_id, doc_id, blob, heading, text, chunk_model, chunk_dim in rows.iterator(chunk_size=2000):
        document = docs.get(str(doc_id))
        if document is None:
            continue
        vector = np.frombuffer(bytes(blob), dtype="<f4")
        current = chunk_model == name and chunk_dim == dim
        yield ProjectedChunk(str(chunk_id), document, heading, passage_text(document.title, heading, text),
                             vector if current else None)
