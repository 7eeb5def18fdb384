"""Sync a source: the connector's documents in, changed ones re-indexed, vanished ones pruned.

Per document: content hash and readers unchanged -> skipped; readers changed only -> access rows rewritten;
content changed -> parse, chunk, embed (through the cache), then chunks, access rows and an IndexChange entry
written in one transaction. A failing document is recorded on the run with its reason and keeps whatever was
indexed before. Nothing is pruned unless the source was listed completely.
"""

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from apps.accounts.access import AUTHENTICATED, group_principal
from apps.compliance.audit import record
from apps.retrieval.embedder import embed_with_cache, get_embedder, text_hash, vector_to_bytes
from apps.retrieval.models import EmbeddingCacheEntry, IndexChange

from .chunking import chunk_text, passage_text
from .connectors import ConnectorError, get_connector
from .connectors.base import ItemError, RawDocument
from .models import Chunk, Document, DocumentAccess, Source, SyncRun, chunk_id_for, document_id_for
from .parsing import ParsedDocument, ParseError, parse

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5
MAX_RECORDED_ERRORS = 1000


# --- requesting ---------------------------------------------------------------------------------------------


def request_sync(source: Source, *, full=False, trigger="manual", user=None, follow_up=False) -> tuple[SyncRun, bool]:
    """Create a pending run and enqueue it once committed; join the source's active run if there is one.

    ``follow_up``: the caller reports a change it has already committed (a webhook, a file watcher). A pending run
    lists the source after it is claimed, so after the change; a running one may have listed it before, so it is
    marked to be followed by another run when it ends. Returns (run, created).
    """
    from .tasks import sync_source

    with transaction.atomic():
        Source.objects.select_for_update().get(pk=source.pk)  # one requester at a time per source
        active = SyncRun.objects.filter(source=source, status__in=SyncRun.ACTIVE).first()
        if active is not None and not _is_stale(active):
            if not follow_up or active.status == SyncRun.PENDING:
                return active, False
            if SyncRun.objects.filter(pk=active.pk, status=SyncRun.RUNNING).update(follow_up=True):
                return active, False
            active = None  # it ended just now: the change gets a run of its own
        if active is not None:
            _finish(active, SyncRun.FAILED, f"worker lost: no heartbeat for {settings.SYNC_STALE_SECONDS} s")
        run = SyncRun.objects.create(source=source, full=full, trigger=trigger, requested_by=user)
        record("sync.requested", actor=user, object_type="source", object_id=source.pk,
               data={"sync_run": run.pk, "full": full, "trigger": trigger})
        transaction.on_commit(lambda: sync_source.delay(run.pk))
    return run, True


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.SYNC_STALE_SECONDS)


def _is_stale(run: SyncRun) -> bool:
    last = run.heartbeat_at or run.created_at
    return run.status == SyncRun.RUNNING and last < _stale_before()


class CancelError(ValueError):
    pass


def cancel_sync(run: SyncRun, *, user=None) -> SyncRun:
    """A pending run is cancelled at once; a running one stops at its next heartbeat (seconds)."""
    if SyncRun.objects.filter(pk=run.pk, status=SyncRun.PENDING).update(
        status=SyncRun.CANCELLED, cancel_requested=True, finished_at=timezone.now(), message="cancelled before start"
    ):
        run.refresh_from_db()
    elif SyncRun.objects.filter(pk=run.pk, status=SyncRun.RUNNING).update(cancel_requested=True):
        run.refresh_from_db()
    else:
        run.refresh_from_db()
        raise CancelError(f"sync run #{run.pk} has already ended ({run.status})")
    record("sync.cancel", actor=user, object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk, "status": run.status})
    return run


def reap_stale_runs() -> int:
    """Fail running syncs whose worker stopped beating and start them again; re-send pending ones whose message
    was lost. Safe to run on any schedule: claims are conditional updates. Returns the number restarted."""
    from .tasks import sync_source

    restarted = 0
    cutoff = _stale_before()
    for run in SyncRun.objects.filter(status=SyncRun.RUNNING, heartbeat_at__lt=cutoff).select_related("source"):
        lost = SyncRun.objects.filter(pk=run.pk, status=SyncRun.RUNNING, heartbeat_at__lt=cutoff).update(
            status=SyncRun.FAILED, finished_at=timezone.now(),
            message=f"worker lost: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC; restarted",
        )
        if lost:
            record("sync.reaped", object_type="source", object_id=run.source_id, data={"sync_run": run.pk})
            request_sync(run.source, full=run.full, trigger="reaper")
            restarted += 1
    for run in SyncRun.objects.filter(status=SyncRun.PENDING, created_at__lt=cutoff):
        sync_source.delay(run.pk)  # the claim makes a duplicate delivery a no-op
        restarted += 1
    return restarted

# --- running ------------------------------------------------------------------------------------------------


def run_sync(sync_run_id: int) -> SyncRun | None:
    """Claim a pending run and carry it out. A run that is gone or already claimed is a logged no-op."""
    now = timezone.now()
    claimed = SyncRun.objects.filter(pk=sync_run_id, status=SyncRun.PENDING).update(
        status=SyncRun.RUNNING, started_at=now, heartbeat_at=now
    )
    if not claimed:
        logger.info("sync run %s is not pending; nothing to do", sync_run_id)
        return None
    run = SyncRun.objects.select_related("source").get(pk=sync_run_id)
    try:
        _SyncJob(run).execute()
    except Exception as exc:
        logger.exception("sync run %s failed", run.pk)
        _finish(run, SyncRun.FAILED, f"{type(exc).__name__}: {exc}")
    if SyncRun.objects.filter(pk=run.pk, follow_up=True).exclude(status__in=SyncRun.ACTIVE).exists():
        # Changes were reported while it ran, perhaps after it listed them (request_sync's follow_up).
        request_sync(run.source, trigger="follow-up")
    return run


DOCUMENT_FIELDS = ["source", "external_id", "uri", "title", "content_type", "size", "modified_at", "content_hash",
                   "author", "language", "last_error", "updated_at"]
PROGRESS_FIELDS = (
    "items_seen", "items_new", "items_updated", "items_unchanged", "items_deleted", "items_failed",
    "chunks_embedded", "embedding_cache_hits", "errors",
)


def _finish(run: SyncRun, status: str, message: str = "") -> bool:
    """End an active run. A run someone else already ended (the reaper, a cancel) is left as it is."""
    run.status, run.message, run.finished_at = status, message, timezone.now()
    fields = {f: getattr(run, f) for f in (*PROGRESS_FIELDS, "status", "message", "finished_at")}
    if not SyncRun.objects.filter(pk=run.pk, status__in=SyncRun.ACTIVE).update(**fields):
        logger.warning("sync run %s had already ended; not marking it %s", run.pk, status)
        return False
    record("sync.finished", object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk, "status": status, "counts": run.counts, "message": message})
    return True


class _Cancelled(Exception):
    pass


class _Lost(Exception):
    """The run is no longer ours: the reaper declared it lost and started another."""


@dataclass
class _Pending:
    """A parsed and chunked document waiting for its batch to be embedded."""

    raw: RawDocument
    document_id: uuid.UUID
    parsed: ParsedDocument
    drafts: list
    inputs: list[str]
    content_hash: str
    size: int
    principals: list[str]
    known_hash: str | None


class _SyncJob:
    def __init__(self, run: SyncRun):
        self.run = run
        self.source = run.source
        self.embedder = get_embedder()
        self.source_groups = tuple(self.source.reader_groups.values_list("name", flat=True))
        self._last_beat = timezone.now()
        self._pending: list[_Pending] = []
        self._pending_chunks = 0
        self._access: dict = {}  # document id -> the principals stored for it
        self._replaced_hashes: set[str] = set()  # text hashes of chunks this sync deleted or replaced

    def execute(self):
        run = self.run
        try:
            connector = get_connector(self.source)
            connector.check()
        except ConnectorError as exc:
            _finish(run, SyncRun.FAILED, str(exc))
            return
        known = dict(Document.objects.filter(source=self.source).values_list("external_id", "content_hash"))
        # Readers of every known document, read once: an unchanged document then costs no query at all.
        for document_id, principal in DocumentAccess.objects.filter(document__source=self.source).values_list(
            "document_id", "principal"
        ):
            self._access.setdefault(document_id, set()).add(principal)
        seen: set[str] = set()
        since = None if run.full else (self.source.checkpoint or None)
        try:
            for raw in connector.documents(since):
                seen.add(raw.external_id)
                run.items_seen += 1
                self._process(raw, known.get(raw.external_id))
                self._heartbeat()
            self._flush()
            present = connector.present_ids() if connector.incremental else seen
            checkpoint = connector.next_checkpoint()
        except ConnectorError as exc:
            # The listing broke off: keep everything not seen, prune nothing, keep the old checkpoint.
            self._flush()
            _finish(run, SyncRun.FAILED, f"listing failed after {run.items_seen} documents: {exc}")
            return
        except _Cancelled:
            # What was written stays (each document is whole); nothing is pruned and the checkpoint stays.
            self._after_write()
            _finish(run, SyncRun.CANCELLED, f"cancelled after {run.items_seen} documents")
            return
        except _Lost:
            logger.warning("sync run %s was ended elsewhere (reaped); stopping", run.pk)
            return
        self._prune(set(known) - set(present))
        self._forget_unused_embeddings()
        if checkpoint != self.source.checkpoint:
            Source.objects.filter(pk=self.source.pk).update(checkpoint=checkpoint)
        self._after_write()
        status = SyncRun.PARTIAL if run.items_failed else SyncRun.SUCCEEDED
        message = f"{run.items_failed} of {run.items_seen} documents failed" if run.items_failed else ""
        _finish(run, status, message)

    def _heartbeat(self, force=False):
        """Save progress and beat; stop if the run was cancelled, or ended by the reaper while we were slow."""
        now = timezone.now()
        if force or (now - self._last_beat).total_seconds() >= HEARTBEAT_SECONDS:
            progress = {f: getattr(self.run, f) for f in PROGRESS_FIELDS}
            alive = SyncRun.objects.filter(pk=self.run.pk, status=SyncRun.RUNNING, cancel_requested=False).update(
                heartbeat_at=now, **progress
            )
            if not alive:
                row = SyncRun.objects.filter(pk=self.run.pk).values("status", "cancel_requested").first()
                raise _Cancelled if row and row["cancel_requested"] else _Lost
            self.run.heartbeat_at = now
            self._last_beat = now

    def _fail(self, external_id: str, reason: str):
        run = self.run
        run.items_failed += 1
        if len(run.errors) < MAX_RECORDED_ERRORS:
            run.errors.append({"item": external_id, "reason": reason})
        Document.objects.filter(source=self.source, external_id=external_id).update(last_error=reason[:2000])
        logger.warning("sync %s: %s failed: %s", run.pk, external_id, reason)

    def _principals(self, raw) -> list[str]:
        groups = raw.groups if raw.groups is not None else self.source_groups
        return sorted(group_principal(g) for g in groups) if groups else [AUTHENTICATED]

    def _process(self, raw, known_hash: str | None):
        try:
            data = raw.read()
        except ItemError as exc:
            self._fail(raw.external_id, str(exc))
            return
        content_hash = hashlib.sha256(data).hexdigest()
        if raw.hashed_metadata is not None:
            content_hash = hashlib.sha256(f"{content_hash}\n{raw.hashed_metadata}".encode()).hexdigest()
        principals = self._principals(raw)
        document_id = document_id_for(self.source.pk, raw.external_id)
        if known_hash == content_hash and not self.run.full:
            if self._sync_access(document_id, principals):
                self.run.items_updated += 1
            else:
                self.run.items_unchanged += 1
            return
        try:
            parsed = parse(raw.external_id, data, content_type=raw.content_type, title=raw.title)
            drafts = chunk_text(
                parsed.text,
                self.embedder.count_tokens,
                settings.CHUNK_TOKENS,
                settings.CHUNK_OVERLAP_TOKENS,
                self.embedder.split_tokens,
            )
            if not drafts:
                raise ParseError("no text left after parsing")
        except ParseError as exc:
            self._fail(raw.external_id, str(exc))
            return
        inputs = [passage_text(parsed.title, d.heading, d.text) for d in drafts]
        self._pending.append(_Pending(raw, document_id, parsed, drafts, inputs, content_hash, len(data),
                                      principals, known_hash))
        self._pending_chunks += len(drafts)
        if self._pending_chunks >= settings.EMBEDDING_FLUSH_CHUNKS:
            self._flush()

    def _flush(self):
        """Embed the pending documents' chunks in one batch (small documents alone would make tiny batches),
        then write them in one transaction; each document is still written whole or not at all."""
        if not self._pending:
            return
        pending, self._pending, self._pending_chunks = self._pending, [], 0
        vectors, hits = embed_with_cache([text for p in pending for text in p.inputs])
        self.run.chunks_embedded += len(vectors) - hits
        self.run.embedding_cache_hits += hits
        batch, offset = [], 0
        for item in pending:
            batch.append((item, vectors[offset : offset + len(item.drafts)]))
            offset += len(item.drafts)
        try:
            self._write(batch)
        except DatabaseError:
            # One document the database refuses must not take the others with it: write them one by one.
            for one in batch:
                try:
                    self._write([one])
                except DatabaseError as exc:
                    self._fail(one[0].raw.external_id, f"database refused the document: {exc}")

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
            log_index_change(ids)
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
            if current - wanted:
                DocumentAccess.objects.filter(document_id=document_id, principal__in=current - wanted).delete()
            DocumentAccess.objects.bulk_create(
                [DocumentAccess(document_id=document_id, principal=p) for p in sorted(wanted - current)]
            )
            if log:
                log_index_change([document_id])
        # After the commit: if the transaction rolls back, the next sync finds the old readers and tries again.
        transaction.on_commit(lambda: self._access.__setitem__(document_id, wanted))
        return True

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
                    log_index_change(existing)
            self.run.items_deleted += len(existing)

    def _forget_unused_embeddings(self):
        """Deletion reaches the caches too (invariant 4): cached embeddings of text that no chunk holds any more
        go. Text still held elsewhere, or re-written by this sync, keeps its entry."""
        hashes = list(self._replaced_hashes)
        for start in range(0, len(hashes), 1000):
            group = hashes[start : start + 1000]
            in_use = set(Chunk.objects.filter(text_hash__in=group).values_list("text_hash", flat=True))
            unused = [h for h in group if h not in in_use]
            if unused:
                EmbeddingCacheEntry.objects.filter(text_hash__in=unused).delete()
        self._replaced_hashes.clear()

    def _after_write(self):
        """Bring the vector index up to date now rather than at the next search; the outbox keeps the changes
        if the index cannot take them (a Weaviate that is down catches up on its next refresh)."""
        from apps.retrieval.index import IndexUnavailable, get_index

        try:
            index = get_index()
            index.refresh()
            index.persist()
        except IndexUnavailable as exc:
            logger.warning("sync run %s: vector index not updated now (%s); the outbox keeps the changes",
                           self.run.pk, exc)


def log_index_change(document_ids):
    """Append to the index outbox. On PostgreSQL an advisory lock held to commit makes ids follow commit
    order, so a reader that has seen id N has seen every id below it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [7_340_001])
    IndexChange.objects.bulk_create([IndexChange(document_id=d) for d in document_ids])
