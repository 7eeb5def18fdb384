"""The embedded index's approximate dense search (faiss IVF): used above the cut-over, filtered inside the search by
an ID selector, kept current by the outbox refresh (removed and added by id), and reloaded from the snapshot at
start-up without rebuilding. Recall and latency against exact search are measured by bench/search.py --recall;
here nprobe is set to every list, so the approximate search must return exactly what exact search returns."""

import numpy as np
import pytest

from apps.accounts.access import AccessScope
from tests.retrieval.index_backends import _bulk_corpus, _query_vector, close_index, index

pytestmark = pytest.mark.django_db
EVERYONE = AccessScope(frozenset(), unrestricted=True)
QUERY = "quarterly harbour tide report"
EXHAUSTIVE = {"min_rows": 50, "min_allowed": 1, "min_fraction": 0.0, "nprobe": 100_000}


@pytest.fixture(autouse=True)
def _fresh_index(settings, tmp_path):
    settings.VECTOR_BACKEND = "embedded"
    settings.DATA_DIR = tmp_path / "data"
    close_index()
    yield
    close_index()


def exact_ids(filters=None, top_k=10):
    """The same search on an index without the approximate part."""
    from django.test import override_settings

    from apps.retrieval.index.embedded import EmbeddedIndex

    with override_settings(INDEX_APPROX={"enabled": False}):
        exact = EmbeddedIndex(index().directory / "exact")
        hits = exact.search(_query_vector(QUERY), EVERYONE, top_k, mode="dense", filters=filters)
    assert exact._approx is None
    return [h.chunk_id for h in hits]


def approx_ids(filters=None, top_k=10):
    hits = index().search(_query_vector(QUERY), EVERYONE, top_k, mode="dense", filters=filters)
    return [h.chunk_id for h in hits]


def test_approximate_search_follows_the_outbox_and_restarts_from_the_snapshot(settings, roles, monkeypatch):
    from apps.ingestion.models import Chunk, Document
    from apps.retrieval.index.approx import ApproximateIndex
    from apps.retrieval.index.embedded import EmbeddedIndex
    from apps.retrieval.outbox import log_index_change
    from apps.retrieval.search import parse_filters

    settings.INDEX_APPROX = EXHAUSTIVE
    visible = _bulk_corpus(visible_docs=2, hidden_docs=18)  # 100 chunks, 10 'restricted'
    idx = index()
    assert idx._approx is not None and idx._approx.ntotal == 100
    assert idx.status()["approximate"]["vectors"] == 100

    calls = []
    real_search = ApproximateIndex.search
    monkeypatch.setattr(ApproximateIndex, "search", lambda self, *a, **k: calls.append(a) or real_search(self, *a, **k))
    assert approx_ids() == exact_ids()
    restricted = parse_filters({"classification": ["restricted"]})
    assert sorted(approx_ids(restricted)) == sorted(visible)  # the selector lets only these through
    assert approx_ids(restricted) == exact_ids(restricted)
    assert len(calls) == 3 and calls[0][2] is None and calls[2][2] is not None  # faiss; filtered with a selector

    # A sync deletes two documents and adds one: removed and added by id, nothing rebuilt.
    gone = list(Document.objects.filter(classification="internal").order_by("id")[:2])
    gone_chunks = {str(c) for c in Chunk.objects.filter(document__in=gone).values_list("id", flat=True)}
    real_build = ApproximateIndex.__dict__["build"].__func__
    monkeypatch.setattr(ApproximateIndex, "build", lambda *a, **k: pytest.fail("rebuilt instead of updated"))
    Document.objects.filter(pk__in=[d.pk for d in gone]).delete()
    log_index_change([d.pk for d in gone])
    template = Chunk.objects.filter(document__classification="internal").first()
    moved = Document.objects.get(pk=template.document_id)
    Document.objects.filter(pk=moved.pk).update(classification="public")
    log_index_change([moved.pk])
    idx.refresh()
    assert idx._approx.ntotal == 90
    assert not set(approx_ids(top_k=100)) & gone_chunks
    public = parse_filters({"classification": ["public"]})
    assert sorted(approx_ids(public)) == sorted(str(c) for c in moved.chunks.values_list("id", flat=True))
    assert approx_ids(top_k=50) == exact_ids(top_k=50)

    # Start-up: the snapshot and the faiss file are read; nothing is rebuilt or re-embedded.
    idx.persist()
    assert idx.approx_path.exists()
    restarted = EmbeddedIndex(idx.directory)
    hits = restarted.search(_query_vector(QUERY), EVERYONE, 50, mode="dense")
    assert restarted._approx is not None and restarted._approx.ntotal == 90
    assert [h.chunk_id for h in hits] == exact_ids(top_k=50)

    # A faiss file that does not hold exactly the snapshot's ids (written by another sync) is not used.
    restarted._approx.remove(np.array([int(restarted._state.slots[0])]))
    restarted._approx.add(restarted._state.vectors[:1], np.array([10_000]))
    restarted._approx.save(idx.approx_path)
    built = []
    monkeypatch.setattr(ApproximateIndex, "build", classmethod(lambda cls, *a: built.append(1) or real_build(cls, *a)))
    again = EmbeddedIndex(idx.directory)
    assert [h.chunk_id for h in again.search(_query_vector(QUERY), EVERYONE, 50, mode="dense")] == exact_ids(top_k=50)
    assert built == [1] and 10_000 not in set(again._approx.ids())


def test_exact_search_below_the_cut_over(settings, roles, monkeypatch):
    from apps.retrieval.index.approx import ApproximateIndex
    from apps.retrieval.search import parse_filters

    settings.INDEX_APPROX = {**EXHAUSTIVE, "min_allowed": 20}
    visible = _bulk_corpus(visible_docs=2, hidden_docs=18)
    assert index()._approx is not None
    monkeypatch.setattr(ApproximateIndex, "search", lambda *a, **k: pytest.fail("approximate below the cut-over"))
    hits = approx_ids(parse_filters({"classification": ["restricted"]}))  # 10 allowed rows < 20
    assert sorted(hits) == sorted(visible)


def test_small_corpus_has_no_approximate_index(settings, roles):
    settings.INDEX_APPROX = {**EXHAUSTIVE, "min_rows": 1000}
    _bulk_corpus(visible_docs=2, hidden_docs=18)
    assert index()._approx is None and index().status()["approximate"] is None
    assert len(approx_ids()) == 10


def test_hybrid_explain_gives_exact_cosine_outside_the_approximate_candidates(settings, roles):
    """A lexical-only candidate has no approximate dense score; the explanation reports its exact cosine."""
    settings.INDEX_APPROX = {**EXHAUSTIVE, "nprobe": 1}
    _bulk_corpus(visible_docs=2, hidden_docs=18)
    hits = index().search(_query_vector(QUERY), EVERYONE, 100, query=QUERY, mode="hybrid", candidates=5)
    vectors = {h.chunk_id: h.dense for h in hits}
    assert all(v is not None and np.isfinite(v) for v in vectors.values())
