"""The sync's writes: a document whole (chunks, readers, outbox entry) in one transaction, readers alone when only
they changed, pruning in slices behind the prune guard, and the caches that deletion reaches."""

import logging

from django.conf import settings
from django.db import DatabaseError, transaction

from ..embedding import forget_unused_embeddings, text_hash, vector_to_bytes
from ..grants import write_readers
from ..hooks import announce_changes, announce_commit
from ..models import (
    Chunk,
    Document,
    SyncRun,
    chunk_id_for,
    document_id_for,
)

logger = logging.getLogger(__name__)

DOCUMENT_FIELDS = ["source", "external_id", "uri", "title", "content_type", "size", "modified_at", "content_hash",
                   "author", "language", "classification", "last_error", "updated_at"]


class DocumentWriter:
    """Mixed into the sync job (job.py), whose state it shares."""

    def _write_ready(self):
        """Write the documents whose every chunk has its vector, in one transaction (one by one if the database
        refuses it); each document is written whole or not at all."""
        if not self._ready:
            return
        ready, self._ready = self._ready, []
        batch = [(item, item.vectors) for item in ready]
        try:
            self._write(batch)
        except DatabaseError:
            # One document the database refuses must not take the others with it: write them one by one.
            for one in batch:
                try:
                    self._write([one])
                except DatabaseError as exc:
                    self._fail(one[0].raw.external_id, f"database refused the document: {exc}", one[0].raw)

    def _write(self, batch):
        ids = [item.document_id for item, _ in batch]
        with transaction.atomic():
            Document.objects.bulk_create(
                [
                    Document(
                        id=item.document_id,
                        source=self.source,
                        external_id=item.raw.external_id,
                        uri=item.raw.uri,
                        title=item.parsed.title,
                        content_type=item.parsed.content_type,
                        size=item.size,
                        modified_at=item.raw.modified_at,
                        content_hash=item.content_hash,
                        author=item.parsed.author,
                        language=item.parsed.language,
                        classification=item.classification,
                        last_error="",
                    )
                    for item, _ in batch
                ],
                update_conflicts=True,
                unique_fields=["id"],
                update_fields=DOCUMENT_FIELDS,
            )
            self._replaced_hashes.update(Chunk.objects.filter(document_id__in=ids).values_list("text_hash", flat=True))
            Chunk.objects.filter(document_id__in=ids).delete()
            Chunk.objects.bulk_create(
                [
                    Chunk(
                        id=chunk_id_for(item.document_id, i),
                        document_id=item.document_id,
                        ordinal=i,
                        heading=draft.heading[:500],
                        text=draft.text,
                        page=draft.page,
                        text_hash=text_hash(item.inputs[i]),
                        embedding=vector_to_bytes(vectors[i]),
                        embedding_model=self.embedder.name,
                        embedding_dim=int(vectors.shape[1]),
                    )
                    for item, vectors in batch
                    for i, draft in enumerate(item.drafts)
                ],
                batch_size=500,
            )
            for item, _ in batch:
                self._sync_access(item.document_id, item.principals, log=False)
            announce_changes(ids)
        for item, _ in batch:
            if item.known_hash is None:
                self.run.items_new += 1
            else:
                self.run.items_updated += 1

    def _sync_access(self, document_id, principals, log=True) -> bool:
        """Make the stored readers of a document these principals; False when they already were."""
        current = self._access.get(document_id, set())
        wanted = set(principals)
        if current == wanted:
            return False
        with transaction.atomic():
            write_readers({document_id: (current, wanted)})
            if log:
                announce_changes([document_id])
        # After the commit: if the transaction rolls back, the next sync finds the old readers and tries again.
        transaction.on_commit(lambda: self._access.__setitem__(document_id, wanted))
        return True

    def _mass_delete_refusal(self, gone: int, known: int) -> str | None:
        """Why this run must not delete ``gone`` of the source's ``known`` documents, or None when it may."""
        if gone <= settings.SYNC_PRUNE_MIN_DOCUMENTS or gone <= settings.SYNC_PRUNE_MAX_FRACTION * known:
            return None
        # Read now, not at the claim: a confirmation may have joined the run while it was running.
        if SyncRun.objects.filter(pk=self.run.pk, allow_mass_delete=True).exists():
            return None
        return (f"refused to delete {gone} of {known} documents, over SYNC_PRUNE_MAX_FRACTION "
                f"({settings.SYNC_PRUNE_MAX_FRACTION:g}) of the source: is its folder or share unmounted or empty? "
                f"Nothing was deleted. If they are really gone, sync again with confirmation: "
                f"manage.py sync_source {self.source.name} --allow-mass-delete, or POST "
                f'sources/{self.source.pk}/sync/ with {{"allow_mass_delete": true}}')

    def _prune(self, gone: set[str]):
        ordered = sorted(gone)
        for start in range(0, len(ordered), 500):  # big deletions in slices, each its own transaction
            ids = [document_id_for(self.source.pk, external_id) for external_id in ordered[start : start + 500]]
            with transaction.atomic():
                existing = list(Document.objects.filter(pk__in=ids).values_list("pk", flat=True))
                self._replaced_hashes.update(
                    Chunk.objects.filter(document_id__in=existing).values_list("text_hash", flat=True)
                )
                Document.objects.filter(pk__in=existing).delete()
                if existing:
                    announce_changes(existing)
            self.run.items_deleted += len(existing)

    def _forget_unused_embeddings(self):
        """Deletion reaches the caches too (invariant 4): cached embeddings of text that no chunk holds any more
        go. Text still held elsewhere, or re-written by this sync, keeps its entry."""
        forget_unused_embeddings(self._replaced_hashes)
        self._replaced_hashes.clear()

    def _after_write(self):
        """Bring the vector index up to date now rather than at the next search (the retrieval app's receiver; the
        outbox keeps the changes if the index cannot take them)."""
        announce_commit(f"sync run {self.run.pk}")
