from celery import shared_task

from . import outbox


@shared_task(name="maintenance.compact_index_outbox")
def compact_index_outbox():
    return str(outbox.compact_outbox())
