"""The way back after EMBEDDING_MODEL changes: re-embed every chunk whose vector was made by another model (name or
dimension), then bring the index up to date. Until it has run, search serves hybrid requests lexical-only and
refuses dense ones (search.py), so vectors of two models are never compared.

Idempotent and resumable: each batch of documents is committed with its IndexChange rows, a chunk whose text
changed meanwhile (a sync rewrote it) is left to the sync, and a second run finds nothing left to do. The
embedding cache (keyed by model and text hash) makes a re-run after an interruption cost nothing for what was done.
"""

import logging
from dataclasses import dataclass

from django.db import transaction

from apps.ingestion.chunking import passage_text
from apps.ingestion.embedding import embed_with_cache, get_embedder, vector_to_bytes
from apps.ingestion.models import Chunk

from .index import get_index
from .index.projection import stale_chunks
from .outbox import log_index_change

logger = logging.getLogger(__name__)
BATCH_DOCUMENTS = 50


@dataclass
class ReembedReport:
    model: str
    dimension: int
    documents: int = 0
    chunks: int = 0
    cache_hits: int = 0
    skipped: int = 0  # changed by a sync while being re-embedded (the sync's own vector stands)
    remaining: int = 0


def reembed(*, batch_documents: int = BATCH_DOCUMENTS, limit_documents: int | None = None, progress=None,
            refresh_index: bool = True) -> ReembedReport:
    embedder = get_embedder()
    report = ReembedReport(embedder.name, embedder.dimension)
    document_ids = sorted({str(d) for d in stale_chunks().values_list("document_id", flat=True)})
    if limit_documents is not None:
        document_ids = document_ids[:limit_documents]
    for start in range(0, len(document_ids), batch_documents):
        batch = document_ids[start : start + batch_documents]
        chunks = list(stale_chunks().filter(document_id__in=batch).select_related("document")
                      .only("id", "heading", "text", "text_hash", "document__title"))
        vectors, hits = embed_with_cache([passage_text(c.document.title, c.heading, c.text) for c in chunks])
        with transaction.atomic():
            for chunk, vector in zip(chunks, vectors, strict=True):
                updated = (Chunk.objects.filter(pk=chunk.pk, text_hash=chunk.text_hash)
                           .update(embedding=vector_to_bytes(vector), embedding_model=embedder.name,
                                   embedding_dim=int(vector.shape[0])))
                report.chunks += updated
                report.skipped += 1 - updated
            log_index_change(batch)
        report.documents += len(batch)
        report.cache_hits += hits
        if progress:
            progress(report, len(document_ids))
    if refresh_index and report.documents:
        index = get_index()
        index.refresh()
        index.persist()
    report.remaining = stale_chunks().count()
    logger.info("re-embedded %d chunks of %d documents with %s (%d cache hits, %d skipped, %d remaining)",
                report.chunks, report.documents, report.model, report.cache_hits, report.skipped, report.remaining)
    return report
