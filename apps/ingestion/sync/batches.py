"""The sync's side of embedding: staging chunk texts in EmbeddingBatch rows, queueing them on the `embedding`
queue (at most EMBEDDING_MAX_IN_FLIGHT outstanding), taking in what other processes embedded, and embedding its
own unclaimed batches rather than wait (so a single worker process cannot deadlock)."""

import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from .. import batching
from ..connectors.base import RawDocument
from ..embedding import embed_with_cache
from ..models import (
    EmbeddingBatch,
)
from ..parsing import ParsedDocument

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often a sync waiting for batches other processes are embedding looks again


@dataclass
class _Pending:
    """A parsed and chunked document waiting for its chunks' vectors (from one or more batches)."""

    raw: RawDocument
    document_id: uuid.UUID
    parsed: ParsedDocument
    drafts: list
    inputs: list[str]
    content_hash: str
    size: int
    principals: list[str]
    known_hash: str | None
    classification: str
    vectors: np.ndarray | None = None
    missing: int = 0  # chunks still without a vector


@dataclass
class _Staged:
    """A batch this sync staged and has not taken in yet: its texts (kept, so a batch that vanished can still be
    embedded here) and which slice of which document each run of texts belongs to."""

    pk: int
    texts: list[str]
    parts: list  # (document, offset in the document, offset in the batch, length)


class EmbeddingBatches:
    """Mixed into the sync job (job.py), whose state it shares: the run, the staged batches, the documents waiting
    for vectors."""

    def _stage(self, item: _Pending):
        """Add a document's chunk texts to the batch being filled, sealing it each time it is full (a long
        document spans several batches; small ones share one)."""
        size = max(1, settings.EMBEDDING_BATCH_CHUNKS)
        offset = 0
        while offset < len(item.inputs):
            take = min(size - len(self._buffer_texts), len(item.inputs) - offset)
            self._buffer_parts.append((item, offset, len(self._buffer_texts), take))
            self._buffer_texts.extend(item.inputs[offset : offset + take])
            offset += take
            if len(self._buffer_texts) >= size:
                self._seal()

    def _seal(self):
        """Stage the filled batch as a row and queue it, once fewer than EMBEDDING_MAX_IN_FLIGHT are outstanding."""
        if not self._buffer_texts:
            return
        self._advance(wait=False)  # take in what is done, so finished documents are written early
        while len(self._staged) >= max(1, settings.EMBEDDING_MAX_IN_FLIGHT):
            self._advance(wait=True)
        texts, parts = self._buffer_texts, self._buffer_parts
        self._buffer_texts, self._buffer_parts = [], []
        row = EmbeddingBatch.objects.create(run=self.run, source=self.source, seq=self._next_seq, texts=texts)
        self._next_seq += 1
        self._staged[row.pk] = _Staged(row.pk, texts, parts)
        self.run.embedding_batches += 1
        self.run.embedding_max_in_flight = max(self.run.embedding_max_in_flight, len(self._staged))
        self._dispatch(row.pk)

    def _dispatch(self, batch_id: int):
        from kombu.exceptions import OperationalError

        from ..tasks import embed_batch

        try:
            embed_batch.delay(batch_id)
        except (OperationalError, OSError) as exc:  # the broker is unreachable: this sync embeds it itself
            logger.warning("sync run %s: batch %s not queued (%s); embedding it here", self.run.pk, batch_id, exc)

    def _drain(self):
        """Seal the last batch and take in every outstanding one: afterwards every document is written."""
        self._seal()
        while self._staged:
            self._advance(wait=True)

    def _advance(self, wait: bool):
        """Take in the batches that are done and write the documents they complete. With ``wait``, return only
        after taking in at least one: embed unclaimed batches here rather than wait for a free process, and wait
        (beating) only for batches another process holds."""
        while True:
            if self._collect() or not wait or not self._staged:
                return
            if self._embed_here():
                return
            self._heartbeat()
            time.sleep(POLL_SECONDS)

    def _collect(self) -> bool:
        """Take in this run's batches that another process embedded. True if any was taken in."""
        if not self._staged:
            return False
        rows = {
            row["pk"]: row
            for row in EmbeddingBatch.objects.filter(pk__in=list(self._staged)).values(
                "pk", "status", "vectors", "embedded", "cache_hits", "done_by"
            )
        }
        taken, progressed = [], False
        for pk, staged in list(self._staged.items()):
            row = rows.get(pk)
            if row is None:
                # Deleted under us: only a run that is no longer ours loses its rows (raises _Lost); else embed it.
                self._heartbeat(force=True)
                vectors, hits = embed_with_cache(staged.texts)
                self._receive(staged, vectors, len(staged.texts) - hits, hits, "inline")
                progressed = True
            elif row["status"] == EmbeddingBatch.DONE:
                vectors = batching.vectors_of(row["vectors"], len(staged.texts))
                self._receive(staged, vectors, row["embedded"], row["cache_hits"], row["done_by"])
                taken.append(pk)
                progressed = True
        if taken:
            EmbeddingBatch.objects.filter(pk__in=taken).delete()
        self._write_ready()
        return progressed

    def _embed_here(self) -> bool:
        """Claim this run's unclaimed batches (oldest first, up to EMBEDDING_FLUSH_CHUNKS texts: the model is
        faster on one large call than on several small ones) and embed them in this process."""
        candidates = list(
            EmbeddingBatch.objects.filter(batching.claimable(), pk__in=list(self._staged))
            .order_by("seq").values_list("pk", flat=True)
        )
        chosen, total = [], 0
        for pk in candidates:
            n = len(self._staged[pk].texts)
            if chosen and total + n > settings.EMBEDDING_FLUSH_CHUNKS:
                break
            chosen.append(pk)
            total += n
        token, mine = batching.claim(chosen)
        if not mine:
            return False
        mine = [pk for pk in chosen if pk in set(mine)]
        try:
            vectors, hits = embed_with_cache([text for pk in mine for text in self._staged[pk].texts])
        except BaseException:
            batching.release(mine, token)
            raise
        self.run.chunks_embedded += len(vectors) - hits  # counted for the whole call, not per batch
        self.run.embedding_cache_hits += hits
        offset = 0
        for pk in mine:
            staged = self._staged[pk]
            self._receive(staged, vectors[offset : offset + len(staged.texts)], 0, 0, "inline")
            offset += len(staged.texts)
        EmbeddingBatch.objects.filter(pk__in=mine).delete()
        self._write_ready()
        return True

    def _receive(self, staged: _Staged, vectors, embedded: int, hits: int, done_by: str):
        self._staged.pop(staged.pk, None)
        self.run.chunks_embedded += embedded
        self.run.embedding_cache_hits += hits
        if done_by == "queue:embedding":
            self.run.embedding_batches_queued += 1
        for item, doc_offset, batch_offset, length in staged.parts:
            item.vectors[doc_offset : doc_offset + length] = vectors[batch_offset : batch_offset + length]
            item.missing -= length
            if item.missing == 0:
                self._ready.append(item)
