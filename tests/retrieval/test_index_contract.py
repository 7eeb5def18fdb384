"""The VectorIndex contract: the same cases against every backend, through the real sync and the real search.

Backends: ``embedded``; ``weaviate-standin`` (the Weaviate backend's real client code against the wire-level
stand-in in tests/retrieval/weaviate_standin, which is not Weaviate); ``weaviate-live`` (a real Weaviate, when the
WEAVIATE_URL environment variable names one, with WEAVIATE_GRPC_PORT and WEAVIATE_API_KEY if needed; each test
uses its own collection and deletes it). Then cases only the Weaviate backend has: a server that is down or never
answers, rejected objects, tenants, API keys, and the stand-in's refusal of what it does not implement.
"""

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
from django.core.management import CommandError, call_command

from apps.accounts.access import AccessScope, access_scope
from tests.conftest import sync_now, token_client, write_corpus
from tests.factories import UserFactory
from tests.retrieval.weaviate_standin import WeaviateStandIn

SEARCH = "/api/v1/search/"
EVERYONE = AccessScope(frozenset(), unrestricted=True)
LIVE_URL = os.environ.get("WEAVIATE_URL", "")
WEAVIATE_BACKENDS = ["weaviate-standin", "weaviate-live"]
BACKENDS = ["embedded", *WEAVIATE_BACKENDS]

pytestmark = pytest.mark.django_db


# --- backends -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def standin():
    server = WeaviateStandIn().start()
    yield server
    server.stop()


def close_index():
    """Close the cached index (a Weaviate client holds connections and threads) and forget it."""
    from apps.retrieval.index import get_index

    if get_index.cache_info().currsize:
        cached = get_index()
        if hasattr(cached, "close"):
            cached.close()
    get_index.cache_clear()


@pytest.fixture(autouse=True)
def _closed_index():
    yield
    close_index()


def _use_backend(name, request, settings):
    """Point the settings at a backend; returns a teardown."""
    from apps.retrieval.index import get_index

    teardown = []
    if name == "embedded":
        settings.VECTOR_BACKEND = "embedded"
    elif name == "weaviate-standin":
        server = request.getfixturevalue("standin")
        server.reset()
        settings.VECTOR_BACKEND = "weaviate"
        settings.WEAVIATE_URL, settings.WEAVIATE_GRPC_PORT = server.url, server.grpc_port

        def nothing_unimplemented():
            assert server.unknown_calls == [], "the backend sent requests the stand-in does not implement"

        teardown.append(nothing_unimplemented)
    else:
        if not LIVE_URL:
            pytest.skip("no live Weaviate: set WEAVIATE_URL")
        settings.VECTOR_BACKEND = "weaviate"
        settings.WEAVIATE_URL = LIVE_URL
        settings.WEAVIATE_GRPC_PORT = int(os.environ.get("WEAVIATE_GRPC_PORT", "50051"))
        settings.WEAVIATE_API_KEY = os.environ.get("WEAVIATE_API_KEY", "")
        settings.WEAVIATE_COLLECTION = f"RagsiteContract{uuid.uuid4().hex[:12]}"

        def drop_collection():
            with weaviate_client(settings) as client:
                client.collections.delete(settings.WEAVIATE_COLLECTION)

        teardown.append(drop_collection)
    get_index.cache_clear()

    def finish():
        close_index()
        for step in teardown:
            step()

    return finish


@pytest.fixture(params=BACKENDS)
def backend(request, settings):
    finish = _use_backend(request.param, request, settings)
    yield request.param
    finish()


@pytest.fixture(params=WEAVIATE_BACKENDS)
def weaviate_backend(request, settings):
    finish = _use_backend(request.param, request, settings)
    yield request.param
    finish()


@contextmanager
def weaviate_client(settings):
    """A client of our own, as an operator would open one, for inspecting and injecting drift."""
    from urllib.parse import urlsplit

    import weaviate
    from weaviate.classes.init import Auth

    url = urlsplit(settings.WEAVIATE_URL)
    client = weaviate.connect_to_custom(
        http_host=url.hostname, http_port=url.port or 80, http_secure=url.scheme == "https",
        grpc_host=url.hostname, grpc_port=settings.WEAVIATE_GRPC_PORT, grpc_secure=url.scheme == "https",
        auth_credentials=Auth.api_key(settings.WEAVIATE_API_KEY) if getattr(settings, "WEAVIATE_API_KEY", "") else None,
        skip_init_checks=True,
    )
    try:
        yield client
    finally:
        client.close()


def index():
    from apps.retrieval.index import get_index

    return get_index()


def index_search(query, *, scope=EVERYONE, mode="hybrid", top_k=10, source_ids=None, fusion="relative_score"):
    from apps.retrieval.embedder import get_embedder

    vector = get_embedder().encode_query(query) if mode != "lexical" else None
    return index().search(vector, scope, top_k, source_ids, query=query, mode=mode, fusion=fusion)


def external_ids(chunk_ids) -> list[str]:
    """The source path of each chunk's document, in order."""
    from apps.ingestion.models import Chunk

    chunk_ids = list(chunk_ids)
    paths = dict(Chunk.objects.filter(id__in=list(chunk_ids)).values_list("id", "document__external_id"))
    return [paths.get(uuid.UUID(str(c)), f"<not in the database: {c}>") for c in chunk_ids]


def db_chunk_ids() -> set[str]:
    from apps.ingestion.models import Chunk

    return {str(c) for c in Chunk.objects.values_list("id", flat=True)}


def max_change() -> int:
    from apps.retrieval.models import IndexChange

    return IndexChange.objects.order_by("-id").values_list("id", flat=True).first() or 0


def sync(source, **kwargs):
    """A sync, which brings the index up to date itself at its end (as the worker does)."""
    run = sync_now(source, **kwargs)
    assert run.status == "succeeded", run.errors
    return run


@pytest.fixture
def handbook(backend, corpus_dir, roles):
    from apps.ingestion.services import create_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    return source


@pytest.fixture
def weaviate_handbook(weaviate_backend, corpus_dir, roles):
    from apps.ingestion.services import create_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    return source


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
    from apps.ingestion.services import create_source

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
    from apps.ingestion.services import create_source

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
    from apps.ingestion.sync import log_index_change
    from apps.retrieval.models import IndexChange, IndexCursor
    from apps.retrieval.outbox import compact_outbox, compacted_through

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


# --- Weaviate only --------------------------------------------------------------------------------------------


def test_hybrid_sides_are_read_from_weaviates_explain_text():
    from apps.retrieval.index.weaviate import sides_from_explain

    current = ("(Result Set 'vector') Document 5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42: original score 0.83452, "
               "normalized score: 0.75 - (Result Set 'keyword') Document 5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42: "
               "original score 2.5e-01, normalized score: 0")
    older = ("\nHybrid (Result Set keyword,hybridSearch) Document 1f: original score 3.25, normalized score: 0.2 - "
             "Hybrid (Result Set vector,hybridVector) Document 1f: original score 0.5, normalized score: 0.5")
    ranked = "\n(Result Set keyword) Document 1f contributed 0.008196721 to the score"
    assert sides_from_explain(current) == (pytest.approx(0.83452), pytest.approx(0.25))
    assert sides_from_explain(older) == (pytest.approx(0.5), pytest.approx(3.25))
    assert sides_from_explain(ranked) == (None, None)  # ranked fusion prints no side scores


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_index_down(client, elapsed_limit=5.0):
    started = time.monotonic()
    response = client.post(SEARCH, {"query": "VPN"}, format="json")
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content
    assert response.json()["detail"].startswith("search index unavailable: Weaviate at http://127.0.0.1:")
    assert elapsed < elapsed_limit, f"took {elapsed:.1f} s"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    vector_index = ready.json()["components"]["vector_index"]
    assert vector_index["ok"] is False and "Weaviate at http://127.0.0.1:" in vector_index["error"]
    return response.json()["detail"]


def test_unreachable_weaviate_answers_503_at_once(settings, bob):
    settings.VECTOR_BACKEND = "weaviate"
    settings.WEAVIATE_URL = f"http://127.0.0.1:{free_port()}"
    settings.WEAVIATE_GRPC_PORT = free_port()
    detail = assert_index_down(token_client(bob))
    assert "unreachable" in detail


@pytest.fixture
def silent_ports():
    """Two ports (REST, gRPC) that accept connections and never answer: a hung or half-firewalled Weaviate."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    held, stop = [], threading.Event()

    def accept(listener):
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threads = [threading.Thread(target=accept, args=(listener,), daemon=True) for listener in listeners]
    for thread in threads:
        thread.start()
    yield [listener.getsockname()[1] for listener in listeners]
    stop.set()
    for thread in threads:
        thread.join()
    for conn in [*held, *listeners]:
        conn.close()


def test_silent_weaviate_answers_503_within_the_timeout(settings, bob, silent_ports):
    settings.VECTOR_BACKEND = "weaviate"
    settings.WEAVIATE_URL = f"http://127.0.0.1:{silent_ports[0]}"
    settings.WEAVIATE_GRPC_PORT = silent_ports[1]
    settings.WEAVIATE_TIMEOUT = 1
    detail = assert_index_down(token_client(bob), elapsed_limit=3.0)
    assert "no answer within 1 s" in detail


def test_weaviate_going_down_answers_503_within_seconds(settings, bob, corpus_dir, roles):
    """The client retries an unavailable gRPC server for about a minute; the backend's deadline does not wait."""
    from apps.ingestion.services import create_source

    server = WeaviateStandIn().start()
    try:
        settings.VECTOR_BACKEND = "weaviate"
        settings.WEAVIATE_URL, settings.WEAVIATE_GRPC_PORT = server.url, server.grpc_port
        sync(create_source(name="handbook", config={"path": str(corpus_dir)}))
        client = token_client(bob)
        assert client.post(SEARCH, {"query": "VPN"}, format="json").status_code == 200
    finally:
        server.stop()
    assert_index_down(client)
    started = time.monotonic()  # the breaker is open: the next request does not even try
    assert client.post(SEARCH, {"query": "VPN"}, format="json").status_code == 503
    assert time.monotonic() - started < 0.5


def test_readyz_reports_weaviate_ready(weaviate_handbook, client):
    component = client.get("/readyz").json()["components"]["vector_index"]
    assert component["ok"] is True, component
    assert component["backend"] == "weaviate" and component["pending_changes"] == 0


def test_rejected_object_is_counted_and_retried(settings, standin, corpus_dir, roles):
    from apps.ingestion.models import Document
    from apps.ingestion.services import create_source
    from apps.retrieval.models import IndexCursor

    standin.reset()
    settings.VECTOR_BACKEND = "weaviate"
    settings.WEAVIATE_URL, settings.WEAVIATE_GRPC_PORT = standin.url, standin.grpc_port
    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    vpn = str(Document.objects.get(external_id="it/vpn.md").pk)
    standin.reject_objects(lambda collection, properties: properties.get("document_id") == vpn)
    write_corpus(corpus_dir, {
        "it/vpn.md": "# Connecting to the VPN\n\nOpen the Zephyrgate portal and sign in.",
        "policies/expenses.txt": "Travel and expenses\n\nTaxis are reimbursed only after midnight (Nightowl rule).",
    })
    sync(source)

    status = index().status()
    assert status["failed_objects"] == 1
    assert status["last_failures"][0]["document_id"] == vpn
    assert "rejected by the stand-in on purpose" in status["last_failures"][0]["error"]
    assert IndexCursor.objects.get().seq < max_change()  # not past the failed document
    assert external_ids(h.chunk_id for h in index_search("Nightowl", mode="lexical")) == ["policies/expenses.txt"]
    assert index_search("Zephyrgate", mode="lexical") == []

    standin.store.rejections.clear()
    index().refresh()
    assert external_ids(h.chunk_id for h in index_search("Zephyrgate", mode="lexical")) == ["it/vpn.md"]
    assert IndexCursor.objects.get().seq == max_change()
    assert index().status()["failed_objects"] == 1  # counted once, not again
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())
    assert standin.unknown_calls == []


def test_vector_of_wrong_length_is_refused_then_retried(weaviate_handbook, corpus_dir):
    """A real per-object error, the same on the stand-in and on Weaviate: a vector of the wrong length."""
    from apps.ingestion.models import Chunk

    write_corpus(corpus_dir, {"it/vpn.md": "# Connecting to the VPN\n\nOpen the Zephyrgate portal and sign in."})
    sync_now(weaviate_handbook)
    from apps.ingestion.sync import log_index_change
    from apps.retrieval.models import IndexCursor

    chunk = Chunk.objects.get(document__external_id="it/vpn.md")
    good = bytes(chunk.embedding)
    Chunk.objects.filter(pk=chunk.pk).update(embedding=good[:40])  # ten floats instead of 384
    log_index_change([chunk.document_id])
    index().refresh()
    assert index().status()["failed_objects"] == 1
    assert IndexCursor.objects.get().seq < max_change()  # the cursor waits before the rejected document
    # the version the sync pushed stays searchable: a rejected update loses nothing
    assert external_ids(h.chunk_id for h in index_search("Zephyrgate", mode="lexical")) == ["it/vpn.md"]

    Chunk.objects.filter(pk=chunk.pk).update(embedding=good)
    log_index_change([chunk.document_id])
    index().refresh()
    assert external_ids(h.chunk_id for h in index_search("Zephyrgate", mode="lexical")) == ["it/vpn.md"]
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())


def test_tenants_keep_organisations_apart(weaviate_backend, settings, corpus_dir, roles):
    from apps.ingestion.services import create_source
    from apps.retrieval.index.weaviate import WeaviateIndex

    settings.WEAVIATE_TENANT = "acme"
    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    assert Counter(index().chunk_ids()) == Counter(db_chunk_ids())
    assert external_ids(h.chunk_id for h in index_search("GateKeeper", mode="lexical")) == ["it/vpn.md"]

    settings.WEAVIATE_TENANT = "globex"
    globex = WeaviateIndex.from_settings()
    try:
        assert globex.chunk_ids() == []  # its tenant is created empty and sees nothing of acme's
        globex.refresh()  # this database's chunks, imported into globex's tenant
        assert len(globex.chunk_ids()) == len(db_chunk_ids())
        index().rebuild()  # acme's rebuild empties acme's tenant only
        assert len(globex.chunk_ids()) == len(db_chunk_ids())
    finally:
        globex.close()


def test_api_key_is_sent(settings, bob, corpus_dir, roles):
    from apps.ingestion.services import create_source

    server = WeaviateStandIn(api_key="s3cret-key").start()
    try:
        settings.VECTOR_BACKEND = "weaviate"
        settings.WEAVIATE_URL, settings.WEAVIATE_GRPC_PORT = server.url, server.grpc_port
        settings.WEAVIATE_API_KEY = "wrong"
        response = token_client(bob).post(SEARCH, {"query": "VPN"}, format="json")
        assert response.status_code == 503 and "401" in response.json()["detail"]
        close_index()
        settings.WEAVIATE_API_KEY = "s3cret-key"
        sync(create_source(name="handbook", config={"path": str(corpus_dir)}))
        response = token_client(bob).post(SEARCH, {"query": "VPN gateway"}, format="json")
        assert response.status_code == 200 and response.json()["results"]
        assert server.unknown_calls == []
    finally:
        server.stop()


def test_standin_refuses_what_it_does_not_implement(standin):
    """Honesty of the stand-in: requests it does not implement fail loudly and are recorded."""
    import weaviate
    from weaviate.classes.config import Configure
    from weaviate.classes.query import Sort
    from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateQueryError

    standin.reset()
    client = weaviate.connect_to_custom(
        http_host="127.0.0.1", http_port=standin.http_port, http_secure=False,
        grpc_host="127.0.0.1", grpc_port=standin.grpc_port, grpc_secure=False, skip_init_checks=True,
    )
    try:
        with pytest.raises(UnexpectedStatusCodeError, match="501"):
            client.collections.list_all()  # GET /v1/schema
        client.collections.create("Probe", vector_config=Configure.Vectors.self_provided())
        with pytest.raises(WeaviateQueryError, match="not implemented"):
            client.collections.use("Probe").aggregate.over_all(total_count=True)
        with pytest.raises(WeaviateQueryError, match="not implemented"):
            client.collections.use("Probe").query.fetch_objects(limit=5, sort=Sort.by_property("x"))
    finally:
        client.close()
    assert standin.unknown_calls[0] == "GET /v1/schema"
    assert any("Aggregate" in call for call in standin.unknown_calls)
    assert any("sort_by" in call for call in standin.unknown_calls)
    standin.reset()


# --- filters and pages, for every backend ---------------------------------------------------------------------


@pytest.fixture
def labelled(backend, roles, tmp_path):
    """Documents of three classifications (from the sidecars) and three modification dates (file mtimes)."""
    import os
    from datetime import UTC, datetime

    from apps.ingestion.services import create_source

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


def _query_vector(query):
    from apps.retrieval.embedder import get_embedder

    return get_embedder().encode_query(query)


def test_db_recheck_applies_the_filters(labelled, bob, settings):
    """A document relabelled in the database after the index last refreshed is not returned against the filter."""
    from apps.ingestion.models import Document

    settings.INDEX_REFRESH_SECONDS = 3600  # the index will not notice
    index().refresh()
    Document.objects.filter(external_id="secret/tender.md").update(classification="public")
    body = {"query": "Marlin telemetry buoy", "filters": {"classification": ["confidential"]}}
    assert token_client(bob).post(SEARCH, body, format="json").json()["results"] == []


def _bulk_corpus(visible_docs=1, hidden_docs=99, chunks_per_doc=5, query="quarterly harbour tide report"):
    """Documents written straight into the database (vectors derived from the real query vector, so the ranking is
    known): hidden documents are 'internal' and match the query better on both sides; visible ones are
    'restricted'. Returns the visible documents' chunk ids."""
    from apps.ingestion.models import Chunk, Document, DocumentAccess, Source, chunk_id_for, document_id_for
    from apps.ingestion.sync import log_index_change
    from apps.retrieval.embedder import get_embedder, vector_to_bytes

    embedder = get_embedder()
    q = embedder.encode_query(query)
    rng = np.random.default_rng(3)
    source = Source.objects.create(name="bulk", kind="filesystem", config={"path": "/"})
    visible, docs, access, chunks = [], [], [], []
    for d in range(visible_docs + hidden_docs):
        is_visible = d < visible_docs
        doc_id = document_id_for(source.pk, f"doc-{d}")
        docs.append(Document(id=doc_id, source=source, external_id=f"doc-{d}", uri=f"bulk://{d}", title=f"Doc {d}",
                             content_type="text/plain", content_hash=f"{d:064x}",
                             classification="restricted" if is_visible else "internal"))
        access.append(DocumentAccess(document_id=doc_id, principal="authenticated"))
        for o in range(chunks_per_doc):
            noise = rng.standard_normal(len(q)).astype(np.float32)
            noise /= np.linalg.norm(noise)
            vector = (0.2 * q + noise) if is_visible else (q + 0.3 * noise)
            vector /= np.linalg.norm(vector)
            text = ("A note that mentions the quarterly report once." if is_visible else
                    "Quarterly harbour tide report: the quarterly harbour tide report of the harbour tide office.")
            chunk_id = chunk_id_for(doc_id, o)
            chunks.append(Chunk(id=chunk_id, document_id=doc_id, ordinal=o, text=f"{text} ({d}.{o})",
                                text_hash=f"{d:032x}{o:032x}", embedding=vector_to_bytes(vector),
                                embedding_model=embedder.name, embedding_dim=embedder.dimension))
            if is_visible:
                visible.append(str(chunk_id))
    Document.objects.bulk_create(docs)
    DocumentAccess.objects.bulk_create(access)
    Chunk.objects.bulk_create(chunks)
    log_index_change([d.id for d in docs])
    index().refresh()
    return visible


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
    from apps.ingestion.sync import log_index_change

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
