"""Sync a source: the connector's documents in, changed ones re-indexed, vanished ones pruned.

Per document: content hash and readers unchanged -> skipped; readers changed only -> access rows rewritten;
content changed -> parse, chunk, embed (through the cache), then chunks, access rows and an IndexChange entry
written in one transaction. A failing document is recorded on the run with its reason and keeps whatever was
indexed before. Nothing is pruned unless the source was listed completely.

Embedding: chunk texts are staged in EmbeddingBatch rows of EMBEDDING_BATCH_CHUNKS and queued as
`embedding.embed_batch` on the `embedding` queue; at most EMBEDDING_MAX_IN_FLIGHT batches of a run (so of a
source) are outstanding. Where the sync would wait, it claims its unclaimed batches and embeds them itself (merged
into one model call of up to EMBEDDING_FLUSH_CHUNKS texts), so it only ever waits for batches another live process
is embedding: it cannot deadlock, even with a single worker process. A document is written (chunks, access,
IndexChange, in one transaction) once all its chunks have vectors; the run prunes and moves its checkpoint once all
its batches are in. A killed sync leaves only staging rows, which the next run deletes; what its batches embedded
is in the embedding cache.
"""

import hashlib
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.compliance.audit import record
from apps.compliance.labels import CLASSIFICATIONS

from . import batching
from .chunking import chunk_text, passage_text
from .connectors import ConnectorError, get_connector
from .connectors.base import ItemError, RawDocument
from .embedding import embed_with_cache, forget_unused_embeddings, get_embedder, text_hash, vector_to_bytes
from .grants import SyncAccess, write_readers
from .hooks import announce_changes, announce_commit, outbox_position
from .models import (
    Chunk,
    Document,
    DocumentAccess,
    EmbeddingBatch,
    Source,
    SyncRun,
    chunk_id_for,
    document_id_for,
)
from .parsing import ParsedDocument, ParseError, parse

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5
MAX_RECORDED_ERRORS = 1000
POLL_SECONDS = 0.1  # how often a sync waiting for batches other processes are embedding looks again
LISTING_POLL_SECONDS = 0.25  # how often a sync waiting on a slow listing beats and looks for a cancel


# --- requesting ---------------------------------------------------------------------------------------------


def request_sync(source: Source, *, full=False, trigger="manual", user=None, follow_up=False,
                 allow_mass_delete=False) -> tuple[SyncRun, bool]:
    """Create a pending run and enqueue it once committed; join the source's active run if there is one.

    ``follow_up``: the caller reports a change it has already committed (a webhook, a file watcher). A pending run
    lists the source after it is claimed, so after the change; a running one may have listed it before, so it is
    marked to be followed by another run when it ends. ``full`` is never merged into a partial run: a pending run
    becomes full (it has listed nothing yet), a running one is followed by a full run. A running run whose
    heartbeat is older than SYNC_LOST_SECONDS is not joined: it is failed as lost and a new run starts.
    ``allow_mass_delete``: the run (new or joined) may prune past the prune guard (confirm_mass_delete).
    Returns (run, created); raises SyncEnqueueError (the new run marked failed) when the broker refuses the task.
    """
    refused: list[str] = []
    raises = not transaction.get_connection().in_atomic_block  # else the enqueue waits for the caller's commit
    with transaction.atomic():
        Source.objects.select_for_update().get(pk=source.pk)  # one requester at a time per source
        active = SyncRun.objects.filter(source=source, status__in=SyncRun.ACTIVE).first()
        if active is not None and not _is_lost(active):
            if _join(active, full=full, follow_up=follow_up):
                if allow_mass_delete:
                    confirm_mass_delete(active, user=user)
                return active, False
            active = None  # it ended just now: the request gets a run of its own
        if active is not None:
            _finish(active, SyncRun.FAILED,
                    f"worker lost: no heartbeat for {settings.SYNC_LOST_SECONDS} s; a new run was requested")
            full = full or active.full or active.follow_up_full
        run = SyncRun.objects.create(source=source, full=full, trigger=trigger, requested_by=user)
        record("sync.requested", actor=user, object_type="source", object_id=source.pk,
               data={"sync_run": run.pk, "full": full, "trigger": trigger})
        if allow_mass_delete:
            confirm_mass_delete(run, user=user)
        # After the commit, so the task never starts before its row is visible. Inside a caller's transaction it
        # runs at the caller's commit: a refusal then fails the run and is logged, but is not raised here.
        transaction.on_commit(lambda: _enqueue(run, refused, log=not raises))
    if refused:
        raise SyncEnqueueError(refused[0])
    return run, True


class SyncEnqueueError(RuntimeError):
    """The broker did not take a sync's task (unreachable, misconfigured); the run was marked failed."""


def _enqueue(run: SyncRun, refused: list[str], log: bool):
    """Send the run's task; if the broker refuses it, fail the run and say why (raised by request_sync when it
    was not inside a caller's transaction, logged otherwise)."""
    from .tasks import sync_source

    try:
        sync_source.delay(run.pk)
    except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the run must not stay pending for ever
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = f"sync run #{run.pk} could not be queued: broker unavailable ({type(exc).__name__}: {first})"
        if log:
            logger.error("%s", reason)
        _finish(run, SyncRun.FAILED, reason)
        refused.append(reason)


def _join(active: SyncRun, *, full: bool, follow_up: bool) -> bool:
    """Make the active run cover a new request; False when it ended meanwhile (the request then starts one)."""
    if active.status == SyncRun.PENDING:
        if not full or active.full:
            return True
        if SyncRun.objects.filter(pk=active.pk, status=SyncRun.PENDING).update(full=True):
            active.full = True  # it has listed nothing yet, so it can simply become full
            return True
    wants_full = full and not active.full
    if not follow_up and not wants_full:
        return True
    changes = {"follow_up": True, **({"follow_up_full": True} if wants_full else {})}
    if SyncRun.objects.filter(pk=active.pk, status=SyncRun.RUNNING).update(**changes):
        for name, value in changes.items():
            setattr(active, name, value)
        return True
    return False


def _stale_before():
    return timezone.now() - timedelta(seconds=settings.SYNC_STALE_SECONDS)


def _lost_before():
    return timezone.now() - timedelta(seconds=settings.SYNC_LOST_SECONDS)


def _is_lost(run: SyncRun) -> bool:
    last = run.heartbeat_at or run.started_at or run.created_at
    return run.status == SyncRun.RUNNING and last < _lost_before()


class CancelError(ValueError):
    pass


def cancel_sync(run: SyncRun, *, user=None) -> SyncRun:
    """A pending run is cancelled at once; a running one stops at its next heartbeat (seconds); one whose worker
    is lost (no heartbeat for SYNC_LOST_SECONDS) is marked cancelled at once, since nobody would stop it."""
    now = timezone.now()
    if SyncRun.objects.filter(pk=run.pk, status=SyncRun.PENDING).update(
        status=SyncRun.CANCELLED, cancel_requested=True, finished_at=now, message="cancelled before start"
    ):
        run.refresh_from_db()
    elif SyncRun.objects.filter(pk=run.pk, status=SyncRun.RUNNING, heartbeat_at__lt=_lost_before()).update(
        status=SyncRun.CANCELLED, cancel_requested=True, finished_at=now,
        message=f"cancelled; its worker was lost (no heartbeat for {settings.SYNC_LOST_SECONDS} s)",
        outbox_seq=outbox_position(),
    ):
        run.refresh_from_db()  # a worker that was only slow finds cancel_requested at its next heartbeat
    elif SyncRun.objects.filter(pk=run.pk, status=SyncRun.RUNNING).update(cancel_requested=True):
        run.refresh_from_db()
    else:
        run.refresh_from_db()
        raise CancelError(f"sync run #{run.pk} has already ended ({run.status})")
    record("sync.cancel", actor=user, object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk, "status": run.status})
    return run


def _restart_lost(lost: Q, message, action: str, trigger: str) -> int:
    """Fail the running runs ``lost`` selects (conditional updates: a run that beat meanwhile, or that another
    reaper took, is left alone) and request each source again. ``message(run)`` says why."""
    restarted = 0
    for run in SyncRun.objects.filter(lost, status=SyncRun.RUNNING).select_related("source"):
        if SyncRun.objects.filter(lost, pk=run.pk, status=SyncRun.RUNNING).update(
            status=SyncRun.FAILED, finished_at=timezone.now(), message=message(run), outbox_seq=outbox_position(),
        ):
            record(action, object_type="source", object_id=run.source_id, data={"sync_run": run.pk})
            request_sync(run.source, full=run.full or run.follow_up_full, trigger=trigger)
            restarted += 1
    return restarted


def reap_stale_runs() -> int:
    """Fail running syncs whose worker stopped beating and start them again; re-send pending ones whose message
    was lost. Safe to run on any schedule: claims are conditional updates. Returns the number restarted."""
    from .tasks import sync_source

    cutoff = _stale_before()  # once: the runs requested below are not stale pending runs to re-send
    restarted = _restart_lost(
        Q(heartbeat_at__lt=cutoff),
        lambda run: f"worker lost: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC; restarted",
        "sync.reaped", "reaper",
    )
    for run in SyncRun.objects.filter(status=SyncRun.PENDING, created_at__lt=cutoff):
        sync_source.delay(run.pk)  # the claim makes a duplicate delivery a no-op
        restarted += 1
    # Staging rows of runs that ended (a killed worker leaves them): nothing needs them any more.
    EmbeddingBatch.objects.exclude(run__status__in=SyncRun.ACTIVE).delete()
    return restarted


def recover_worker_runs(hostname: str, booted_at) -> int:
    """At a worker's start-up (worker_ready): its predecessor under the same name died with whatever it was
    running, and a run nobody has beaten for SYNC_LOST_SECONDS lost its worker too. Fail those and request their
    sources again, rather than leave them to the reaper's SYNC_STALE_SECONDS. Returns the number restarted."""
    lost = Q(heartbeat_at__lt=_lost_before())
    if hostname:
        lost |= Q(claimed_by=hostname, started_at__lt=booted_at)
    return _restart_lost(
        lost,
        lambda run: f"worker lost: {run.claimed_by or 'its worker'} stopped while running it (found when worker "
                    f"{hostname} started); restarted",
        "sync.recovered", "recovery",
    )

# --- running ------------------------------------------------------------------------------------------------


def run_sync(sync_run_id: int, worker: str = "") -> SyncRun | None:
    """Claim a pending run and carry it out (``worker``: the claiming Celery worker's hostname, which its next
    start looks for). A run that is gone or already claimed is a logged no-op."""
    now = timezone.now()
    claimed = SyncRun.objects.filter(pk=sync_run_id, status=SyncRun.PENDING).update(
        status=SyncRun.RUNNING, started_at=now, heartbeat_at=now, claimed_by=worker[:255]
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
    finally:
        # Its staging rows, however it ended; their queued tasks then find nothing to do.
        EmbeddingBatch.objects.filter(run_id=run.pk).delete()
    follow = SyncRun.objects.filter(pk=run.pk, follow_up=True).exclude(status__in=SyncRun.ACTIVE)
    if (follow_up_full := follow.values_list("follow_up_full", flat=True).first()) is not None:
        # Changes were reported while it ran, perhaps after it listed them, or a full run was asked for.
        request_sync(run.source, full=follow_up_full, trigger="follow-up")
    return run


DOCUMENT_FIELDS = ["source", "external_id", "uri", "title", "content_type", "size", "modified_at", "content_hash",
                   "author", "language", "classification", "last_error", "updated_at"]
PROGRESS_FIELDS = (
    "items_seen", "items_new", "items_updated", "items_unchanged", "items_deleted", "items_failed",
    "chunks_embedded", "embedding_cache_hits", "errors",
    "embedding_batches", "embedding_batches_queued", "embedding_max_in_flight",
)


def _finish(run: SyncRun, status: str, message: str = "") -> bool:
    """End an active run. A run someone else already ended (the reaper, a cancel) is left as it is."""
    run.status, run.message, run.finished_at = status, message, timezone.now()
    run.outbox_seq = outbox_position()
    fields = {f: getattr(run, f) for f in (*PROGRESS_FIELDS, "status", "message", "finished_at", "outbox_seq")}
    if not SyncRun.objects.filter(pk=run.pk, status__in=SyncRun.ACTIVE).update(**fields):
        logger.warning("sync run %s had already ended; not marking it %s", run.pk, status)
        return False
    record("sync.finished", object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk, "status": status, "counts": run.counts, "message": message})
    return True


class _Cancelled(Exception):
    pass


def _unstorable_id(external_id: str) -> str | None:
    """Why an id cannot be stored as text (PostgreSQL takes neither lone surrogates nor NUL), or None."""
    try:
        external_id.encode("utf-8")
    except UnicodeEncodeError:
        return "id is not valid UTF-8 text; rename it at the source to index it"
    return "id contains a NUL character" if "\x00" in external_id else None


_END = object()


def _listed(connector, since, beat):
    """The connector's documents. A connector that says ``list_in_thread`` is listed by a thread of its own while
    this one calls ``beat`` every LISTING_POLL_SECONDS it waits: the heartbeat stays fresh and a cancel (raised by
    ``beat``) stops the run even while the listing hangs on a slow share. The thread, if it is stuck, is left to
    finish on its own; it hands nothing more over."""
    documents = connector.documents(since)
    if not getattr(connector, "list_in_thread", False):
        yield from documents
        return
    items: queue.Queue = queue.Queue(maxsize=1)  # listing runs at most one document ahead of the sync
    stop = threading.Event()

    def hand_over(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=LISTING_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        error = None
        try:
            for raw in documents:
                if not hand_over((raw, None)):
                    break
        except BaseException as exc:  # handed to the sync, which raises it as if it had listed itself
            error = exc
        finally:
            documents.close()
        hand_over((_END, error))

    threading.Thread(target=produce, name="sync-listing", daemon=True).start()
    try:
        while True:
            try:
                raw, error = items.get(timeout=LISTING_POLL_SECONDS)
            except queue.Empty:
                beat()
                continue
            if raw is _END:
                if error is not None:
                    raise error
                return
            yield raw
    finally:
        stop.set()


class _Lost(Exception):
    """The run is no longer ours: the reaper declared it lost and started another."""


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


class _SyncJob:
    def __init__(self, run: SyncRun):
        self.run = run
        self.source = run.source
        self.embedder = get_embedder()
        self.source_groups = tuple(self.source.reader_groups.values_list("name", flat=True))
        self._last_beat = timezone.now()
        self._buffer_texts: list[str] = []  # the batch being filled
        self._buffer_parts: list = []
        self._staged: dict[int, _Staged] = {}  # outstanding batches by id, oldest first
        self._next_seq = 0
        self._ready: list[_Pending] = []  # documents with every vector, to be written
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
        # Staging rows of earlier runs of this source (one killed mid-sync) are dead: their runs have ended.
        EmbeddingBatch.objects.filter(source=self.source).exclude(run_id=run.pk).delete()
        known = dict(Document.objects.filter(source=self.source).values_list("external_id", "content_hash"))
        # Readers of every known document, read once: an unchanged document then costs no query at all.
        for document_id, principal in DocumentAccess.objects.filter(document__source=self.source).values_list(
            "document_id", "principal"
        ):
            self._access.setdefault(document_id, set()).add(principal)
        seen: set[str] = set()
        since = None if run.full else (self.source.checkpoint or None)
        try:
            for raw in _listed(connector, since, self._heartbeat):
                seen.add(raw.external_id)
                run.items_seen += 1
                self._process(raw, known.get(raw.external_id))
                self._heartbeat()
            self._drain()
            present = connector.present_ids() if connector.incremental else seen
            checkpoint = connector.next_checkpoint()
        except ConnectorError as exc:
            # The listing broke off: keep everything not seen, prune nothing, keep the old checkpoint.
            try:
                self._drain()
            except (_Cancelled, _Lost):
                pass  # ending anyway: what was written stays
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
        gone = set(known) - set(present)
        refusal = self._mass_delete_refusal(len(gone), len(known))
        if refusal:
            # Nothing is deleted and the checkpoint stays, so the next run (confirmed or not) sees the same.
            self._forget_unused_embeddings()
            self._after_write()
            _finish(run, SyncRun.FAILED, refusal)
            return
        self._prune(gone)
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
        # Connector ACL or source readers, then the document's own grants or restriction: the one rule, in
        # apps.ingestion.grants (which also records the connector's ACL, so a grant changed later can recompute it).
        if getattr(self, "_grants", None) is None:
            self._grants = SyncAccess(self.source.pk)
        return self._grants.principals(document_id_for(self.source.pk, raw.external_id), raw.groups)

    def _process(self, raw, known_hash: str | None):
        unstorable = _unstorable_id(raw.external_id)
        if unstorable:
            self._fail(raw.external_id.encode("utf-8", "backslashreplace").decode(), unstorable)
            return
        try:
            data = raw.read()
        except ItemError as exc:
            self._fail(raw.external_id, str(exc))
            return
        classification = raw.classification or self.source.classification
        if classification not in CLASSIFICATIONS:
            self._fail(raw.external_id, f"unknown classification {classification!r}")
            return
        content_hash = hashlib.sha256(data).hexdigest()
        if raw.hashed_metadata is not None:
            content_hash = hashlib.sha256(f"{content_hash}\n{raw.hashed_metadata}".encode()).hexdigest()
        # The classification travels with every chunk into the index, so a new label re-indexes the document
        # (from cached embeddings: it costs no model call).
        content_hash = hashlib.sha256(f"{content_hash}\nclassification={classification}".encode()).hexdigest()
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
        item = _Pending(raw, document_id, parsed, drafts, inputs, content_hash, len(data), principals, known_hash,
                        classification, vectors=np.empty((len(inputs), self.embedder.dimension), dtype=np.float32),
                        missing=len(inputs))
        self._stage(item)

    # --- embedding batches ----------------------------------------------------------------------------------

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

        from .tasks import embed_batch

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


def confirm_mass_delete(run: SyncRun, *, user=None) -> None:
    """Confirm that this run may delete more than SYNC_PRUNE_MAX_FRACTION of its source (the prune guard). Called
    in the transaction that requests the run, so the worker, started on commit, finds the confirmation."""
    SyncRun.objects.filter(pk=run.pk).update(allow_mass_delete=True)
    run.allow_mass_delete = True
    record("sync.mass_delete_allowed", actor=user, object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk})
