"""The IndexChange outbox: its one writer (:func:`log_index_change`, connected to ingestion's ``documents_changed``
hook) and its compaction.

A row may go once it is older than INDEX_OUTBOX_RETENTION_DAYS and every external index (each IndexCursor with a
position) has applied it. The embedded indexes of web and worker processes keep no cursor in the database: one
that is further behind than what was removed notices it (OutboxCompaction.through_seq above its own position,
read after its own read of the outbox, since removal and watermark commit together) and rebuilds from the database,
which is the source of truth, instead of replaying; a snapshot older than the watermark is not loaded. Rebuilding
needs no embedding (DESIGN invariant 1)."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from apps.ingestion.models import SyncRun

from .models import IndexChange, IndexCursor, OutboxCompaction

logger = logging.getLogger(__name__)

DELETE_BATCH = 10_000
OUTBOX_LOCK = 7_340_001  # PostgreSQL advisory lock id


def log_index_change(document_ids) -> None:
    """Append to the index outbox. On PostgreSQL an advisory lock held to commit makes ids follow commit
    order, so a reader that has seen id N has seen every id below it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [OUTBOX_LOCK])
    IndexChange.objects.bulk_create([IndexChange(document_id=d) for d in document_ids])


def on_documents_changed(sender, document_ids, **kwargs) -> None:
    log_index_change(document_ids)


def compacted_through() -> int:
    """The highest outbox id that may have been removed (0: nothing was)."""
    return OutboxCompaction.objects.filter(pk=1).values_list("through_seq", flat=True).first() or 0


def outbox_head() -> int:
    """The position of an index just built from the database: the newest outbox id, or the watermark when the
    outbox is empty after a compaction (else the index would think itself behind it and rebuild again)."""
    newest = IndexChange.objects.aggregate(newest=Max("id"))["newest"] or 0
    return max(newest, compacted_through())


def synced_through() -> int:
    """Every sync that has ended wrote only outbox rows up to this id (the highest SyncRun.outbox_seq): an index at
    or past it shows them all. ORDER BY DESC LIMIT 1 over its index, the plan MAX() gets: one index probe, whatever
    the table's size or statistics (an EXISTS on ``outbox_seq > n`` seq-scanned when statistics were missing)."""
    row = SyncRun.objects.filter(outbox_seq__isnull=False).order_by("-outbox_seq").values_list("outbox_seq")[:1]
    return next(iter(row), (0,))[0]


@dataclass
class CompactionReport:
    deleted: int
    through_seq: int
    kept: int
    held_by: str = ""  # the IndexCursor that had not applied every row old enough to go

    def __str__(self):
        held = f"; held back by index {self.held_by}, which has not applied them yet" if self.held_by else ""
        return f"removed {self.deleted} outbox rows (through #{self.through_seq}), kept {self.kept}{held}"


def compact_outbox(retention: timedelta | None = None) -> CompactionReport:
    """Remove the outbox rows older than ``retention`` (INDEX_OUTBOX_RETENTION_DAYS) that every external index has
    applied, and raise the watermark, in one transaction."""
    retention = timedelta(days=settings.INDEX_OUTBOX_RETENTION_DAYS) if retention is None else retention
    old = IndexChange.objects.filter(created_at__lt=timezone.now() - retention)
    through, held_by = old.aggregate(last=Max("id"))["last"] or 0, ""
    behind = IndexCursor.objects.filter(seq__isnull=False, seq__lt=through).order_by("seq").first()
    if behind is not None:  # never past what an external index still has to apply
        through, held_by = behind.seq, behind.key
    deleted = 0
    with transaction.atomic():
        mark, _ = OutboxCompaction.objects.select_for_update().get_or_create(pk=1)
        while through > 0:
            lowest = IndexChange.objects.filter(id__lte=through).order_by("id").values_list("id", flat=True).first()
            if lowest is None:
                break
            count, _ = IndexChange.objects.filter(id__lte=min(through, lowest + DELETE_BATCH)).delete()
            deleted += count
        mark.through_seq = max(mark.through_seq, through)
        mark.compacted_at = timezone.now()
        mark.rows_deleted += deleted
        mark.save()
    report = CompactionReport(deleted, mark.through_seq, IndexChange.objects.count(), held_by)
    logger.info("index outbox: %s", report)
    return report
