from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    name = "apps.retrieval"
    label = "retrieval"

    def ready(self):
        # Ingestion announces what it wrote through its hooks; it never imports this app (DESIGN: layers).
        from apps.ingestion import hooks

        from . import outbox
        from .index import refresh_after_commit

        hooks.documents_changed.connect(outbox.on_documents_changed, dispatch_uid="retrieval.outbox")
        hooks.writes_committed.connect(refresh_after_commit, dispatch_uid="retrieval.refresh_index")
        # Recorded on each sync run as it ends, so a search can tell that its index is behind it (read-your-writes).
        hooks.register_outbox_position(outbox.outbox_head)
