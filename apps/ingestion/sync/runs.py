"""Sync runs as rows: requesting one (joining an active run, never merging a full request into a partial one),
cancelling, ending, the reaper and a restarted worker's recovery. A job is a row first: the task is sent once the
row is committed."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.compliance.audit import record

from ..hooks import outbox_position
from ..models import (
    EmbeddingBatch,
    Source,
    SyncRun,
)

logger = logging.getLogger(__name__)


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
    from ..tasks import sync_source

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
    from ..tasks import sync_source

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

PROGRESS_FIELDS = (
    "items_seen", "items_new", "items_updated", "items_unchanged", "items_deleted", "items_failed",
    "chunks_embedded", "embedding_cache_hits", "errors", "error_readers",
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


def confirm_mass_delete(run: SyncRun, *, user=None) -> None:
    """Confirm that this run may delete more than SYNC_PRUNE_MAX_FRACTION of its source (the prune guard). Called
    in the transaction that requests the run, so the worker, started on commit, finds the confirmation."""
    SyncRun.objects.filter(pk=run.pk).update(allow_mass_delete=True)
    run.allow_mass_delete = True
    record("sync.mass_delete_allowed", actor=user, object_type="source", object_id=run.source_id,
           data={"sync_run": run.pk})
