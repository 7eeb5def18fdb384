import os
from datetime import UTC, datetime

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragsite.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = Celery("ragsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
# One direct exchange per queue: queues sharing the default exchange and key would each get a copy of a task.
QUEUES = ("ingestion", "embedding", "compliance", "maintenance")
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
app.autodiscover_tasks()


@worker_process_init.connect
def _load_model(**kwargs):
    """Load the embedding model when a pool process starts, not inside the first task (once per process)."""
    from apps.ingestion.embedding import get_embedder

    get_embedder().encode(["warm up"])


_booted_at = None


@worker_init.connect
def _note_boot(**kwargs):
    """When this worker started: a run its name claimed before then was claimed by a previous life of it."""
    global _booted_at
    _booted_at = datetime.now(UTC)


@worker_ready.connect
def _recover_lost_syncs(sender=None, **kwargs):
    """Fail and re-request the syncs a killed predecessor of this worker (same name) left running, and runs whose
    heartbeat stopped SYNC_LOST_SECONDS ago, now rather than when the reaper's SYNC_STALE_SECONDS are up."""
    import logging

    from django.db import connection

    from apps.ingestion.sync import recover_worker_runs

    hostname = getattr(sender, "hostname", "") or ""
    try:
        restarted = recover_worker_runs(hostname, _booted_at or datetime.now(UTC))
        if restarted:
            logging.getLogger(__name__).warning("worker %s: restarted %d lost sync runs", hostname, restarted)
    except Exception:  # a worker that cannot recover still works; the reaper remains the safety net
        logging.getLogger(__name__).exception("worker %s: recovering lost sync runs failed", hostname)
    finally:
        connection.close()  # the main process runs no tasks: it keeps no connection open
