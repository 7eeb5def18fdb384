"""How ingestion tells the layers above it what it wrote, without importing them (DESIGN: imports point down).

The retrieval app (its index outbox, its vector index) and, later, compliance (the personal-data map) connect
receivers in their ``AppConfig.ready()``. Receivers of :data:`documents_changed` run inside the writer's transaction,
so what they write commits, or rolls back, with the chunks and readers that caused it.
"""

from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal

# Sent inside the transaction that changed documents' chunks or readers, or deleted documents, with
# ``document_ids``: a list (empty: the writer only wants to be ordered with other writers; the outbox takes the lock
# that orders its entries, see apps.retrieval.outbox.log_index_change).
documents_changed = Signal()

# Sent after a sync (or another bulk writer) has committed what it wrote, with ``reason`` (text, for the logs):
# the vector index of this process catches up now rather than at the next search.
writes_committed = Signal()


_outbox_position = None


def register_outbox_position(provider) -> None:
    """The retrieval app registers how far its index outbox has got (a callable returning an int)."""
    global _outbox_position
    _outbox_position = provider


def outbox_position() -> int:
    """How far the index outbox has got: recorded on a sync run as it ends, so a search after it can tell that its
    index is behind what the run wrote (read-your-writes)."""
    if _outbox_position is None:
        raise ImproperlyConfigured("no outbox position registered (is apps.retrieval installed?)")
    return _outbox_position()


def announce_changes(document_ids) -> None:
    """Tell the receivers, in the caller's transaction, that these documents changed."""
    if not documents_changed.has_listeners():
        # Without the outbox's receiver a change would never reach the index: fail loudly instead.
        raise ImproperlyConfigured("no receiver for ingestion's documents_changed (is apps.retrieval installed?)")
    documents_changed.send(sender=None, document_ids=list(document_ids))


def announce_commit(reason: str) -> None:
    writes_committed.send(sender=None, reason=reason)
