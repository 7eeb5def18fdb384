from celery import shared_task

from . import batching, sync
from .models import Source


@shared_task(name="ingestion.sync_source", bind=True, acks_late=True)
def sync_source(self, sync_run_id: int):
    # The worker's name goes on the run, so this worker's next start knows the run died with it.
    sync.run_sync(sync_run_id, worker=self.request.hostname or "")


@shared_task(name="embedding.embed_batch", bind=True, acks_late=True)
def embed_batch(self, batch_id: int):
    """Embed one staged batch of a sync's chunk texts (routed to the `embedding` queue by its name). A no-op when
    the sync, or an earlier delivery, already did it."""
    queue = (self.request.delivery_info or {}).get("routing_key") or "direct"
    return batching.run_batch(batch_id, done_by=f"queue:{queue}")


@shared_task(name="maintenance.reap_stale_syncs")
def reap_stale_syncs():
    return sync.reap_stale_runs()


@shared_task(name="ingestion.scheduled_sync")
def scheduled_sync(source_id: int):
    """Beat's entry point: request a run (joining one already active, so runs never stack)."""
    source = Source.objects.filter(pk=source_id, enabled=True).first()
    if source is not None:
        sync.request_sync(source, trigger="schedule")
