"""Embedding batches: chunk texts a sync staged, embedded by whoever claims them first.

A claim is a conditional UPDATE (pending, or claimed longer ago than EMBEDDING_CLAIM_SECONDS, -> claimed with a
fresh token), so it works the same on PostgreSQL and SQLite and two claimers never both win. Finishing is
conditional on the token: a claimer that lost its claim (presumed dead, taken over) writes nothing. Both the
`embedding.embed_batch` task and the sync itself (apps.ingestion.sync) claim this way.
"""

import logging
import uuid
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from apps.ingestion.embedding import embed_with_cache, vector_from_bytes, vector_to_bytes

from .models import EmbeddingBatch

logger = logging.getLogger(__name__)


def claimable() -> Q:
    cutoff = timezone.now() - timedelta(seconds=settings.EMBEDDING_CLAIM_SECONDS)
    return Q(status=EmbeddingBatch.PENDING) | Q(status=EmbeddingBatch.CLAIMED, claimed_at__lt=cutoff)


def claim(batch_ids) -> tuple[uuid.UUID, list[int]]:
    """Claim those of these batches nobody holds. Returns (token, the ids claimed)."""
    token = uuid.uuid4()
    ids = list(batch_ids)
    if not ids:
        return token, []
    EmbeddingBatch.objects.filter(claimable(), pk__in=ids).update(
        status=EmbeddingBatch.CLAIMED, claim=token, claimed_at=timezone.now()
    )
    return token, list(EmbeddingBatch.objects.filter(pk__in=ids, claim=token).values_list("pk", flat=True))


def release(batch_ids, token):
    """Give claimed batches back (an embedding that failed), so the next claimer need not wait for the lease."""
    EmbeddingBatch.objects.filter(pk__in=list(batch_ids), claim=token, status=EmbeddingBatch.CLAIMED).update(
        status=EmbeddingBatch.PENDING, claim=None, claimed_at=None
    )


def vectors_of(row_vectors, count: int) -> np.ndarray:
    return vector_from_bytes(row_vectors).reshape(count, -1)


def run_batch(batch_id: int, *, done_by: str) -> bool:
    """The `embedding.embed_batch` task's work: claim the batch, embed its texts through the cache, store the
    vectors. A batch that is gone (its run ended), done or held by someone else is a no-op: safe to run twice."""
    token, mine = claim([batch_id])
    if not mine:
        logger.info("embedding batch %s is gone, done or claimed; nothing to do", batch_id)
        return False
    try:
        texts = EmbeddingBatch.objects.filter(pk=batch_id).values_list("texts", flat=True).first()
        if texts is None:
            return False  # deleted just now: its run ended
        vectors, hits = embed_with_cache(texts)
    except BaseException:
        release([batch_id], token)
        raise
    done = EmbeddingBatch.objects.filter(pk=batch_id, claim=token, status=EmbeddingBatch.CLAIMED).update(
        status=EmbeddingBatch.DONE,
        vectors=vector_to_bytes(vectors),
        embedded=len(texts) - hits,
        cache_hits=hits,
        done_by=done_by[:100],
    )
    if not done:
        logger.info("embedding batch %s was taken over or dropped while it was embedded", batch_id)
    return bool(done)
