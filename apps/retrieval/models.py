from django.db import models


class IndexChange(models.Model):
    """Outbox of documents whose chunks or readers changed, in commit order.

    Written in the same transaction as the chunks; every process holding a vector index replays the entries
    after the last one it applied, so the index follows the database (which stays the source of truth).
    """

    document_id = models.UUIDField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"#{self.pk} {self.document_id}"


class IndexCursor(models.Model):
    """How far an external vector index (a Weaviate collection, or one tenant of it) has applied the IndexChange
    outbox.

    Kept in the database beside the outbox rather than in the index: several processes share one Weaviate, and the
    row lock taken while applying makes them apply changes one at a time (Weaviate has no transactions, and two
    processes writing the same document out of order could leave the older version behind a cursor that has moved
    past it). A collection found missing is recreated and its cursor reset, so a wiped Weaviate is reloaded.
    """

    key = models.CharField(max_length=300, unique=True, help_text="Backend, collection, tenant and embedding model")
    seq = models.BigIntegerField(
        null=True, blank=True,
        help_text="Last IndexChange id applied; empty: never loaded, the next refresh imports every chunk",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.key} @ {self.seq}"


class OutboxCompaction(models.Model):
    """How far the IndexChange outbox has been compacted (apps.retrieval.outbox): rows up to ``through_seq`` may be
    gone. An index whose position is older cannot replay what it missed and rebuilds from the database instead."""

    through_seq = models.BigIntegerField(default=0)
    compacted_at = models.DateTimeField(null=True, blank=True)
    rows_deleted = models.BigIntegerField(default=0, help_text="In all compactions so far")

    def __str__(self):
        return f"outbox compacted through #{self.through_seq}"
