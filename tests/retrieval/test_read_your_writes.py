"""Read-your-writes: once a sync has ended, the next search of any process's index finds what it wrote, however
recently that index refreshed (INDEX_REFRESH_SECONDS alone would let it serve the older state for up to a second),
on every backend. Changes made outside a sync keep the timed refresh (test_search_recheck.py relies on it)."""

import pytest

from apps.retrieval.index import IndexUnavailable
from tests.conftest import write_corpus
from tests.retrieval.index_backends import EVERYONE, external_ids, sync

pytestmark = pytest.mark.django_db

NEW = {"it/printers.md": "# Printers\n\nThe Quilljet printer on floor two needs Zephyrine toner cartridges."}
QUERY = "Quilljet Zephyrine toner"


def _another_process_index(backend, settings):
    """An index object of its own, as a web process holds (not the one a sync in this process refreshes)."""
    if backend == "embedded":
        from apps.retrieval.index.embedded import EmbeddedIndex

        return EmbeddedIndex(settings.DATA_DIR / "web-process")
    from apps.retrieval.index.weaviate import WeaviateIndex

    return WeaviateIndex.from_settings()


def test_a_search_right_after_a_sync_ended_finds_its_documents(handbook, backend, corpus_dir, settings,
                                                                monkeypatch):
    settings.INDEX_REFRESH_SECONDS = 3600  # no timed refresh can hide the race: only the sync's end may trigger one
    web = _another_process_index(backend, settings)
    try:
        web.refresh()
        assert web.search(None, EVERYONE, 5, query=QUERY, mode="lexical") == []
        write_corpus(corpus_dir, NEW)

        def worker_cannot_reach_the_index():
            # For Weaviate the sync's own refresh would apply its changes for everyone: make it fail, as when the
            # worker cannot reach Weaviate (the outbox keeps the changes). The embedded index of another process
            # is never touched by the sync anyway.
            raise IndexUnavailable("unreachable from the worker")

        with monkeypatch.context() as patch:
            patch.setattr("apps.retrieval.index.get_index", worker_cannot_reach_the_index)
            run = sync(handbook)
        assert run.items_new == 1 and run.outbox_seq
        hits = web.search(None, EVERYONE, 5, query=QUERY, mode="lexical")
        assert external_ids(h.chunk_id for h in hits)[:1] == ["it/printers.md"]
    finally:
        if hasattr(web, "close"):
            web.close()


def test_a_change_outside_a_sync_still_waits_for_the_timed_refresh(handbook, backend, settings):
    """The cheap check looks at ended syncs only: a change logged by other writers (grants, deletions) is picked
    up by the timed refresh, and the search's database re-check covers it meanwhile."""
    from apps.ingestion.models import Document
    from apps.retrieval.outbox import log_index_change

    settings.INDEX_REFRESH_SECONDS = 3600
    web = _another_process_index(backend, settings)
    try:
        web.refresh()
        doc_id = Document.objects.get(external_id="it/vpn.md").pk
        before = set(web.chunk_ids())
        Document.objects.filter(pk=doc_id).delete()
        log_index_change([doc_id])
        web.search(None, EVERYONE, 5, query="VPN gateway", mode="lexical")
        assert set(web.chunk_ids()) == before  # not refreshed by the search
        web.refresh()
        assert set(web.chunk_ids()) < before
    finally:
        if hasattr(web, "close"):
            web.close()
