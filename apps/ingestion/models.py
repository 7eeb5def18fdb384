import hashlib
import uuid

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils.text import slugify

from apps.compliance.labels import CLASSIFICATIONS

CLASSIFICATION_CHOICES = [(c, c) for c in CLASSIFICATIONS]

# Namespace for deterministic ids: a document's id is uuid5(NS, "source_id:external_id"), a chunk's is
# uuid5(document id, ordinal), so re-running any step writes the same rows (DESIGN invariant 2).
ID_NAMESPACE = uuid.UUID("5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42")


def document_id_for(source_id, external_id: str) -> uuid.UUID:
    # surrogateescape: an id holding bytes that are not UTF-8 (a file name os.walk decoded with lone surrogates)
    # still gets an id instead of failing the whole sync; valid text encodes exactly as before, so ids do not move.
    # (uuid.uuid5 of Python 3.11 takes only str, so its two steps are spelled out: sha1 of namespace and name.)
    name = f"{source_id}:{external_id}".encode("utf-8", "surrogateescape")
    return uuid.UUID(bytes=hashlib.sha1(ID_NAMESPACE.bytes + name, usedforsecurity=False).digest()[:16], version=5)


def chunk_id_for(document_id: uuid.UUID, ordinal: int) -> uuid.UUID:
    return uuid.uuid5(document_id, str(ordinal))


class Source(models.Model):
    KIND_CHOICES = [
        ("filesystem", "File system"),
        ("sql", "SQL database"),
        ("http", "HTTP JSON API"),
        ("s3", "Amazon S3"),
        ("sharepoint", "SharePoint"),
        ("confluence", "Confluence"),
        ("push", "Push (webhook or message queue)"),
    ]

    name = models.SlugField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=KIND_CHOICES, default="filesystem")
    config = models.JSONField(default=dict, blank=True)
    schedule = models.CharField(max_length=100, blank=True, help_text="Cron expression (5 fields); empty for none")
    reader_groups = models.ManyToManyField(
        Group, blank=True, related_name="readable_sources",
        help_text="Groups that may read this source's documents; empty means every signed-in user",
    )
    classification = models.CharField(
        max_length=20, choices=CLASSIFICATION_CHOICES, default="internal",
        help_text="Of its documents, unless the source labels a document itself",
    )
    enabled = models.BooleanField(default=True)
    checkpoint = models.JSONField(
        default=dict, blank=True, editable=False,
        help_text="Where the connector's next incremental pull starts; set by successful syncs",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        self.name = slugify(self.name)
        super().save(*args, **kwargs)


def _readable_by(queryset, scope, document: str):
    """Rows whose document's readers intersect the scope: the queryset side of apps.accounts.access. A per-row
    EXISTS on the access rows (their unique index), so the database looks up only the documents at hand instead of
    listing every document the scope may read (22 ms on SQLite at 100k chunks for a search's re-check, now <1 ms)."""
    if scope.unrestricted:
        return queryset
    if not scope.principals:
        return queryset.none()
    readers = DocumentAccess.objects.filter(document_id=models.OuterRef(document), principal__in=scope.principals)
    return queryset.filter(models.Exists(readers))


class DocumentQuerySet(models.QuerySet):
    def readable_by(self, scope):
        return _readable_by(self, scope, "pk")


class ChunkQuerySet(models.QuerySet):
    def readable_by(self, scope):
        return _readable_by(self, scope, "document_id")


class Document(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="documents")
    external_id = models.CharField(max_length=1024, help_text="The document's id at its source (a relative path)")
    uri = models.CharField(max_length=2048)
    title = models.CharField(max_length=500)
    content_type = models.CharField(max_length=100)
    size = models.BigIntegerField(default=0)
    modified_at = models.DateTimeField(null=True, blank=True)
    content_hash = models.CharField(max_length=64)
    author = models.CharField(max_length=300, blank=True, default="", help_text="From the file's own metadata")
    language = models.CharField(
        max_length=16, blank=True, default="", help_text="ISO 639-1 code detected from the text; empty when unsure"
    )
    classification = models.CharField(
        max_length=20, choices=CLASSIFICATION_CHOICES, default="internal", db_index=True,
        help_text="From the source's own metadata (a sidecar), else the source's classification",
    )
    last_error = models.TextField(blank=True, help_text="Why the latest attempt to re-index it failed, if it did")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DocumentQuerySet.as_manager()

    class Meta:
        ordering = ["source_id", "external_id"]
        constraints = [models.UniqueConstraint(fields=["source", "external_id"], name="document_unique_per_source")]

    def __str__(self):
        return self.title


class DocumentAccess(models.Model):
    """One principal (``authenticated``, ``group:NAME``, ``user:ID``) that may read a document's chunks."""

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="access")
    principal = models.CharField(max_length=200, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "principal"], name="document_access_unique")]

    def __str__(self):
        return self.principal


class Chunk(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    heading = models.CharField(max_length=500, blank=True)
    text = models.TextField()
    page = models.PositiveIntegerField(null=True, blank=True, help_text="The page it is on (paged formats: PDF)")
    text_hash = models.CharField(max_length=64, help_text="SHA-256 of the text that was embedded")
    embedding = models.BinaryField(help_text="float32 little-endian vector")
    embedding_model = models.CharField(max_length=200)
    embedding_dim = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ChunkQuerySet.as_manager()

    class Meta:
        ordering = ["document_id", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")]

    def __str__(self):
        return f"{self.document_id}#{self.ordinal}"


class SyncRun(models.Model):
    PENDING, RUNNING, SUCCEEDED, PARTIAL, FAILED, CANCELLED = (
        "pending", "running", "succeeded", "partial", "failed", "cancelled",
    )
    STATUS_CHOICES = [(s, s) for s in (PENDING, RUNNING, SUCCEEDED, PARTIAL, FAILED, CANCELLED)]
    ACTIVE = (PENDING, RUNNING)

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="sync_runs")
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING, db_index=True)
    trigger = models.CharField(max_length=32, default="manual")
    full = models.BooleanField(default=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    items_seen = models.PositiveIntegerField(default=0)
    items_new = models.PositiveIntegerField(default=0)
    items_updated = models.PositiveIntegerField(default=0)
    items_unchanged = models.PositiveIntegerField(default=0)
    items_deleted = models.PositiveIntegerField(default=0)
    items_failed = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    embedding_cache_hits = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[{item, reason}] per failed document")
    error_readers = models.JSONField(
        default=list, blank=True,
        help_text="Per entry of errors, the principals that could have read the item (the API names an item only to "
                  "them); null where unknown",
    )
    message = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False, help_text="The worker stops at its next heartbeat")
    allow_mass_delete = models.BooleanField(
        default=False, help_text="Confirmed: it may delete more than SYNC_PRUNE_MAX_FRACTION of the source",
    )
    follow_up = models.BooleanField(
        default=False, help_text="Changes were reported while it ran; another run starts when it ends",
    )
    embedding_batches = models.PositiveIntegerField(default=0, help_text="Batches of chunk texts it staged")
    embedding_batches_queued = models.PositiveIntegerField(
        default=0, help_text="Of those, embedded by an embedding.embed_batch task on the embedding queue",
    )
    embedding_max_in_flight = models.PositiveIntegerField(
        default=0, help_text="Most batches it had outstanding at once (bounded by EMBEDDING_MAX_IN_FLIGHT)",
    )
    follow_up_full = models.BooleanField(
        default=False, help_text="A full sync was requested while it ran: the run that follows it is full",
    )
    claimed_by = models.CharField(
        max_length=255, blank=True, help_text="The Celery worker (hostname) that claimed it; empty: run in-process",
    )
    outbox_seq = models.BigIntegerField(
        null=True, blank=True, db_index=True,
        help_text="The index outbox head when it ended: a search after that refreshes its index at least this far",
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["source", "status"])]

    def __str__(self):
        return f"sync #{self.pk} of {self.source} ({self.status})"

    @property
    def counts(self):
        return {
            "seen": self.items_seen,
            "new": self.items_new,
            "updated": self.items_updated,
            "unchanged": self.items_unchanged,
            "deleted": self.items_deleted,
            "failed": self.items_failed,
            "chunks_embedded": self.chunks_embedded,
            "embedding_cache_hits": self.embedding_cache_hits,
        }


class PushedDocument(models.Model):
    """A document a push source was sent (webhook or change stream): its source of truth, which the push
    connector lists so the ordinary sync indexes it. ``seq`` grows per source in commit order (it is assigned under
    the source's row lock), so an incremental sync resumes after the highest one it saw."""

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="pushed_documents")
    external_id = models.CharField(max_length=1024)
    seq = models.BigIntegerField()
    title = models.CharField(max_length=500, blank=True)
    content = models.TextField()
    content_type = models.CharField(max_length=100)
    groups = models.JSONField(null=True, blank=True, help_text="Reader groups; null: the source's own readers")
    uri = models.CharField(max_length=2048, blank=True)
    pushed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["source_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["source", "external_id"], name="pushed_document_unique")]
        indexes = [models.Index(fields=["source", "seq"])]

    def __str__(self):
        return f"{self.source_id}:{self.external_id}"


class WebhookDelivery(models.Model):
    """A webhook signature already accepted: a second delivery with the same one is a replay. Rows older than the
    timestamp tolerance are pruned, since a replay of them is refused for its stale timestamp anyway."""

    signature = models.CharField(max_length=64, unique=True, help_text="hex HMAC-SHA256 of the delivery")
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="webhook_deliveries")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self):
        return f"{self.source_id}:{self.signature[:12]}"


class EmbeddingBatch(models.Model):
    """Chunk texts a sync staged for embedding (EMBEDDING_BATCH_CHUNKS of them), queued as
    ``embedding.embed_batch(id)``. Whoever claims it first (the task, or the sync itself when it would otherwise
    wait) embeds it; the sync then writes the documents whose chunks all have vectors and deletes the row. Rows of
    a run that ended are deleted by the source's next run and by the reaper: they hold no state anyone needs (the
    vectors are also in the embedding cache)."""

    PENDING, CLAIMED, DONE = "pending", "claimed", "done"
    STATUS_CHOICES = [(s, s) for s in (PENDING, CLAIMED, DONE)]

    run = models.ForeignKey(SyncRun, on_delete=models.CASCADE, related_name="embedding_batches_staged")
    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField(help_text="Its order within the run")
    texts = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default=PENDING)
    claim = models.UUIDField(null=True, blank=True, help_text="Token of the current claimer")
    claimed_at = models.DateTimeField(null=True, blank=True)
    vectors = models.BinaryField(null=True, blank=True, help_text="float32 little-endian, one row per text")
    embedded = models.PositiveIntegerField(default=0, help_text="Texts the model embedded (cache misses)")
    cache_hits = models.PositiveIntegerField(default=0)
    done_by = models.CharField(max_length=100, blank=True, help_text="queue:NAME for a task, inline for the sync")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="embedding_batch_unique_seq")]
        indexes = [models.Index(fields=["run", "status"])]

    def __str__(self):
        return f"batch {self.seq} of sync #{self.run_id} ({self.status})"


class EmbeddingCacheEntry(models.Model):
    """A computed embedding keyed by model and text hash, so unchanged text is never embedded twice."""

    model = models.CharField(max_length=200)
    text_hash = models.CharField(max_length=64)
    vector = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "retrieval_embeddingcacheentry"  # created by the retrieval app, which held the model first
        constraints = [models.UniqueConstraint(fields=["model", "text_hash"], name="embedding_cache_unique")]

    def __str__(self):
        return f"{self.model}:{self.text_hash[:12]}"
