import os

from celery import Celery
from celery.signals import worker_process_init
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
