"""The VectorIndex contract: the same cases against every backend (tests/retrieval/index_backends.py), through the
real sync and the real search, then filters and pages on every backend. Cases only the Weaviate backend has are in
test_weaviate_backend.py.
"""

import dataclasses
import os
import uuid
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
from django.core.management import CommandError, call_command

from apps.accounts.access import access_scope
from tests.conftest import sync_now, token_client, write_corpus
from tests.factories import UserFactory
from tests.retrieval.index_backends import (
    EVERYONE,
    SEARCH,
    _bulk_corpus,
    _query_vector,
    db_chunk_ids,
    external_ids,
    index,
    index_search,
    max_change,
    sync,
    weaviate_client,
)

pytestmark = pytest.mark.django_db


# --- the contract, for every backend ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fusion", "query", "expected"),
    [
        ("dense", "relative_score", "How do I connect to the VPN from home?", "it/vpn.md"),
        ("lexical", "relative_score", "vpn-leeds.internal gateway", "it/vpn.md"),
        ("hybrid", "relative_score", "hotel nights capped in London", "policies/expenses.txt"),
        ("hybrid", "rrf", "laptop full-disk encryption", "policies/security.html"),
    ],
)
def test_each_mode_ranks_the_expected_document_first(handbook, bob, mode, fusion, query, expected):
    from apps.retrieval.search import search

    results, _ = search(bob, query, top_k=3, mode=mode, fusion=fusion, explain=True)
    assert results, f"no results for {query!r}"
    assert external_ids([results[0].chunk_id]) == [expected]
    if mode == "hybrid" and fusion == "relative_score":  # both sides' own scores are reported
        assert results[0].explain["dense"] > 0.3 and results[0].explain["lexical"] > 0


def test_permission_filter_is_inside_the_search_and_fills_top_k(backend, roles, tmp_path):
    """A user who may read 1 document of 20 still gets top_k results, all from that document, in every mode,
    although the 19 documents they may not read match the query better."""
    from apps.ingestion.sources import create_source

    hidden = {
        f"hr/forecast-{n:02d}.md": f"# Quarterly budget forecast {n}\n\nThe quarterly budget forecast for quarter "
                                   f"{n} is reviewed by the budget committee. Quarterly budget forecast figures."
        for n in range(19)
    }
    topics = ["travel", "hardware", "training", "catering", "software licences", "office rent", "recruiting",
              "marketing events"]
    visible = "# Finance handbook\n\n" + "\n\n".join(
        f"## {topic.title()}\n\nThe {topic} budget line is owned by one manager, who approves every purchase "
        f"order against it before the supplier is paid." for topic in topics
    )
    root = write_corpus(tmp_path / "restricted", {
        **hidden, "hr/.ragsite-access.json": '{"groups": ["hr"]}',
        "finance/handbook.md": visible, "finance/.ragsite-access.json": '{"groups": ["finance"]}',
    })
    sync(create_source(name="restricted", config={"path": str(root)}))
    fiona = UserFactory(username="fiona", groups=["user", "finance"])
    query = "quarterly budget forecast"

    unfiltered = external_ids(h.chunk_id for h in index_search(query, top_k=5))
    assert all(path.startswith("hr/") for path in unfiltered)  # filtering after the search would leave nothing
    for mode in ("dense", "lexical", "hybrid"):
        hits = index_search(query, scope=access_scope(fiona), mode=mode, top_k=5)
        assert external_ids(h.chunk_id for h in hits) == ["finance/handbook.md"] * 5, mode

    response = token_client(fiona).post(SEARCH, {"query": query, "top_k": 5}, format="json")
    assert response.status_code == 200
    assert [r["uri"].endswith("finance/handbook.md") for r in response.json()["results"]] == [True] * 5


def test_source_filter(handbook, bob, tmp_path):
    from apps.ingestion.sources import create_source

    wiki_dir = write_corpus(tmp_path / "wiki", {"vpn-setup.md": "# VPN set-up\n\nThe VPN gateway needs the "
                                                "GateKeeper client; ask the service desk for a badge number."})
    wiki = create_source(name="wiki", config={"path": str(wiki_dir)})
    sync(wiki)
    client = token_client(bob)

    def sources(mode, filters):
        body = {"query": "VPN gateway GateKeeper client", "top_k": 10, "mode": mode, "filters": filters}
        return {r["source"] for r in client.post(SEARCH, body, format="json").json()["results"]}

    for mode in ("hybrid", "dense", "lexical"):
        assert sources(mode, {}) == {"handbook", "wiki"}, mode
        assert sources(mode, {"source": "wiki"}) == {"wiki"}, mode
        assert sources(mode, {"source": [handbook.pk]}) == {"handbook"}, mode
        assert sources(mode, {"source": "no-such-source"}) == set(), mode


def test_deleted_document_disappears_after_refresh(handbook, corpus_dir):
    assert index_search("GateKeeper badge number", mode="lexical")  # it is there first
    (corpus_dir / "it/vpn.md").unlink()
    run = sync(handbook)
    assert run.items_deleted == 1
    assert index_search("GateKeeper badge number", mode="lexical") == []
    assert "it/vpn.md" not in external_ids(h.chunk_id for h in index_search("VPN", mode="dense", top_k=10))
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())


def test_changed_document_loses_its_old_chunks(handbook, corpus_dir):
    from apps.ingestion.models import Chunk

    before = Chunk.objects.filter(document__external_id="it/vpn.md").count()
    write_corpus(corpus_dir, {"it/vpn.md": "# Connecting to the VPN\n\nOpen the Zephyrgate portal and sign in."})
    run = sync(handbook)
    assert run.items_updated == 1
    assert Chunk.objects.filter(document__external_id="it/vpn.md").count() < before  # really fewer chunks
    assert index_search("GateKeeper badge number", mode="lexical") == []
    assert external_ids(h.chunk_id for h in index_search("Zephyrgate portal", mode="lexical")) == ["it/vpn.md"]
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())


def test_an_index_behind_the_compacted_outbox_reloads_from_the_database(handbook, settings):
    """Compaction (apps/retrieval/outbox.py) removed outbox rows this index had not applied: replaying cannot tell it
    what changed, so it loads everything from the database. The embedded index is behind by its own position; a
    Weaviate cursor is made to lag here by hand (compaction itself waits for cursors: a restored backup could)."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.ingestion.models import Document
    from apps.retrieval.models import IndexChange, IndexCursor
    from apps.retrieval.outbox import compact_outbox, compacted_through, log_index_change

    settings.INDEX_REFRESH_SECONDS = 3600  # the index looks only when told to
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())
    doc = Document.objects.get(external_id="it/vpn.md")
    doc_id = str(doc.pk)
    doc.delete()
    log_index_change([doc_id])
    IndexChange.objects.update(created_at=timezone.now() - timedelta(days=30))
    IndexCursor.objects.update(seq=max_change())  # as if applied, so compaction may remove the row...
    assert compact_outbox(timedelta(days=7)).deleted >= 1 and not IndexChange.objects.exists()
    IndexCursor.objects.update(seq=0)  # ...but this index never saw it
    assert set(index().chunk_ids()) - db_chunk_ids()  # the deleted document's chunks: nothing told the index yet
    index().refresh()
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())
    assert index_search("GateKeeper badge number", mode="lexical") == []
    assert compacted_through() == max(IndexCursor.objects.values_list("seq", flat=True), default=compacted_through())


def test_search_catches_up_with_the_outbox_by_itself(handbook, bob, corpus_dir, settings):
    """A web process never told about a sync still serves its result (the index replays the outbox when due)."""
    settings.INDEX_REFRESH_SECONDS = 0
    write_corpus(corpus_dir, {"it/printers.md": "# Printers\n\nThe Quilljet printer on floor two needs toner."})
    assert sync_now(handbook).items_new == 1  # no explicit refresh
    body = {"query": "Quilljet printer toner", "mode": "lexical", "top_k": 3}
    results = token_client(bob).post(SEARCH, body, format="json").json()["results"]
    assert [r["uri"].endswith("it/printers.md") for r in results] == [True]


def test_resync_creates_no_duplicates(handbook, backend, settings):
    from apps.retrieval.reconcile import reconcile

    first = Counter(index().chunk_ids())
    for _ in range(2):
        run = sync(handbook, full=True)
        assert run.items_updated == 4  # every document written again, same ids
    assert Counter(index().chunk_ids()) == first == Counter(db_chunk_ids())
    assert not reconcile().drift
    if backend != "embedded":  # Weaviate's object ids are the chunk ids
        with weaviate_client(settings) as client:
            objects = client.collections.use(index().collection_name).query.fetch_objects(limit=1000).objects
        assert sorted(str(o.uuid) for o in objects) == sorted(o.properties["chunk_id"] for o in objects)
        assert len(objects) == len(db_chunk_ids())


def test_rebuild_and_reconcile_repair_injected_drift(handbook, backend, settings, capsys):
    from apps.ingestion.models import Chunk, chunk_id_for

    call_command("reconcile_index")
    assert "missing 0, orphaned 0, duplicates 0" in capsys.readouterr().out

    chunks = list(Chunk.objects.order_by("document_id", "ordinal"))
    orphan, template, duplicated = chunks[0], chunks[1], chunks[2]
    Chunk.objects.filter(pk=orphan.pk).delete()  # behind the outbox's back: the index keeps it
    copied = {f.attname: getattr(template, f.attname) for f in Chunk._meta.concrete_fields
              if f.attname not in ("id", "ordinal")}
    Chunk.objects.create(**copied, id=chunk_id_for(template.document_id, 999), ordinal=999)  # never indexed
    inject_duplicate(backend, settings, duplicated)

    with pytest.raises(CommandError, match="drifted"):
        call_command("reconcile_index")
    assert "missing 1, orphaned 1, duplicates 1" in capsys.readouterr().out
    call_command("reconcile_index", "--repair")
    assert "repaired: index rebuilt from the database" in capsys.readouterr().out
    call_command("reconcile_index")
    assert "missing 0, orphaned 0, duplicates 0" in capsys.readouterr().out

    call_command("rebuild_index")
    assert f"index rebuilt from the database: {Chunk.objects.count()} chunks" in capsys.readouterr().out
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())


def inject_duplicate(backend, settings, chunk):
    """A second index entry for one chunk: a copied row (embedded), an object under a foreign id (Weaviate)."""
    if backend == "embedded":
        idx = index()
        state = idx._state
        row = int(np.flatnonzero(state.chunk_ids == str(chunk.pk))[0])
        idx._state = dataclasses.replace(
            state,
            chunk_ids=np.append(state.chunk_ids, state.chunk_ids[row]),
            doc_codes=np.append(state.doc_codes, state.doc_codes[row]),
            vectors=np.vstack([state.vectors, state.vectors[row : row + 1]]),
            tf=sp.vstack([state.tf, state.tf[row]], format="csr"),
            lengths=np.append(state.lengths, state.lengths[row]),
            version=state.version + 1,
        )
        return
    from weaviate.classes.data import DataObject

    with weaviate_client(settings) as client:
        collection = client.collections.use(index().collection_name)
        vector = np.frombuffer(bytes(chunk.embedding), dtype="<f4").tolist()
        result = collection.data.insert_many([DataObject(
            uuid=uuid.uuid4(), properties={"chunk_id": str(chunk.pk), "document_id": str(chunk.document_id)},
            vector={"default": vector},
        )])
        assert not result.errors


# --- filters and pages, for every backend ---------------------------------------------------------------------


@pytest.fixture
def labelled(backend, roles, tmp_path):
    """Documents of three classifications (from the sidecars) and three modification dates (file mtimes)."""
    from datetime import UTC, datetime

    from apps.ingestion.sources import create_source

    root = write_corpus(tmp_path / "labelled", {
        "public/launch.md": "# Launch notes\n\nThe Marlin telemetry buoy launch is announced on the website.",
        "public/.ragsite-access.json": '{"classification": "public"}',
        "ops/buoy.md": "# Buoy operations\n\nMarlin telemetry buoy batteries are swapped every spring.",
        "secret/tender.md": "# Tender\n\nThe Marlin telemetry buoy tender budget is confidential until award.",
        "secret/.ragsite-access.json": '{"classification": "confidential"}',
    })
    dates = {"public/launch.md": datetime(2023, 3, 1, tzinfo=UTC), "ops/buoy.md": datetime(2024, 6, 15, tzinfo=UTC),
             "secret/tender.md": datetime(2025, 1, 10, 12, 0, tzinfo=UTC)}
    for rel, when in dates.items():
        os.utime(root / rel, (when.timestamp(), when.timestamp()))
    sync(create_source(name="labelled", config={"path": str(root)}))
    return root


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, {"public/launch.md", "ops/buoy.md", "secret/tender.md"}),
        ({"classification": ["confidential"]}, {"secret/tender.md"}),
        ({"classification": ["public", "internal"]}, {"public/launch.md", "ops/buoy.md"}),
        ({"classification": ["restricted"]}, set()),
        ({"modified_after": "2024-01-01"}, {"ops/buoy.md", "secret/tender.md"}),
        ({"modified_before": "2024-06-15T00:00:00Z"}, {"public/launch.md"}),
        ({"modified_after": "2024-06-15", "modified_before": "2025-01-10T12:00:00+00:00"}, {"ops/buoy.md"}),
        ({"modified_after": "2025-01-10T13:00:00+01:00"}, {"secret/tender.md"}),  # 12:00 UTC, inclusive
        ({"classification": ["confidential"], "modified_before": "2025-01-01"}, set()),
        ({"source": "labelled", "classification": ["internal"]}, {"ops/buoy.md"}),
    ],
)
def test_metadata_filters_inside_the_search(labelled, bob, mode, filters, expected):
    from apps.retrieval.search import parse_filters

    hits = index_search("Marlin telemetry buoy", mode=mode, top_k=10)
    assert set(external_ids(h.chunk_id for h in hits)) == {"public/launch.md", "ops/buoy.md", "secret/tender.md"}
    filtered = index().search(
        None if mode == "lexical" else _query_vector("Marlin telemetry buoy"), EVERYONE, 10,
        query="Marlin telemetry buoy", mode=mode, filters=parse_filters(filters))
    assert set(external_ids(h.chunk_id for h in filtered)) == expected
    body = {"query": "Marlin telemetry buoy", "mode": mode, "filters": filters}
    response = token_client(bob).post(SEARCH, body, format="json")
    assert response.status_code == 200, response.content
    assert {r["uri"].split("/labelled/")[1] for r in response.json()["results"]} == expected


def test_db_recheck_applies_the_filters(labelled, bob, settings):
    """A document relabelled in the database after the index last refreshed is not returned against the filter."""
    from apps.ingestion.models import Document

    settings.INDEX_REFRESH_SECONDS = 3600  # the index will not notice
    index().refresh()
    Document.objects.filter(external_id="secret/tender.md").update(classification="public")
    body = {"query": "Marlin telemetry buoy", "filters": {"classification": ["confidential"]}}
    assert token_client(bob).post(SEARCH, body, format="json").json()["results"] == []


def test_filter_leaving_one_percent_still_fills_top_k(backend, roles, bob):
    from apps.retrieval.search import parse_filters

    visible = _bulk_corpus()  # 5 of 500 chunks are 'restricted'
    query = "quarterly harbour tide report"
    for mode in ("dense", "lexical", "hybrid"):
        unfiltered = index().search(None if mode == "lexical" else _query_vector(query), EVERYONE, 5, query=query,
                                    mode=mode)
        assert not set(h.chunk_id for h in unfiltered) & set(visible), mode  # a post-filter would find nothing
        hits = index().search(None if mode == "lexical" else _query_vector(query), EVERYONE, 5, query=query,
                              mode=mode, filters=parse_filters({"classification": ["restricted"]}))
        assert sorted(h.chunk_id for h in hits) == sorted(visible), mode
    body = {"query": query, "top_k": 5, "filters": {"classification": ["restricted"]}}
    results = token_client(bob).post(SEARCH, body, format="json").json()["results"]
    assert sorted(r["chunk_id"] for r in results) == sorted(visible)


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_pages_are_slices_of_one_ranking(backend, roles, bob, mode):
    _bulk_corpus(visible_docs=0, hidden_docs=12)  # 60 chunks
    client = token_client(bob)
    query = "quarterly harbour tide report"
    whole = client.post(SEARCH, {"query": query, "top_k": 45, "mode": mode}, format="json").json()
    assert len(whole["results"]) == 45 and whole["next_offset"] == 45
    pages, offset = [], 0
    while offset is not None:
        body = client.post(SEARCH, {"query": query, "top_k": 10, "offset": offset, "mode": mode},
                           format="json").json()
        assert body["offset"] == offset
        pages.extend(body["results"])
        offset = body["next_offset"]
    ids = [r["chunk_id"] for r in pages]
    assert len(ids) == 60 and len(set(ids)) == 60  # every chunk exactly once, the last page says so
    assert ids[:45] == [r["chunk_id"] for r in whole["results"]]
    scores = [r["score"] for r in pages]
    assert scores == sorted(scores, reverse=True)


def test_ties_are_ordered_by_chunk_id(backend, roles, bob):
    """Chunks with the same text and vector score the same; they come back in chunk-id order, on every page."""
    from apps.ingestion.models import Chunk
    from apps.retrieval.outbox import log_index_change

    _bulk_corpus(visible_docs=0, hidden_docs=4)
    first = Chunk.objects.order_by("id").first()
    Chunk.objects.update(text=first.text, embedding=first.embedding)
    log_index_change(list(Chunk.objects.values_list("document_id", flat=True).distinct()))
    index().refresh()
    client = token_client(bob)
    for mode in ("dense", "lexical"):
        got = []
        for offset in (0, 7, 14):
            body = {"query": "quarterly harbour tide report", "top_k": 7, "offset": offset, "mode": mode}
            got += [r["chunk_id"] for r in client.post(SEARCH, body, format="json").json()["results"]]
        assert got == sorted(str(c) for c in Chunk.objects.values_list("id", flat=True)), mode
