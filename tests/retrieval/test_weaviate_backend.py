"""Cases only the Weaviate backend has, on the wire-level stand-in and (with WEAVIATE_URL) a live Weaviate: a server
that is down or never answers, rejected objects, tenants, API keys, and the stand-in's refusal of what it does not
implement.
"""

import socket
import threading
import time
from collections import Counter

import pytest

from tests.conftest import sync_now, token_client, write_corpus
from tests.retrieval.index_backends import (
    SEARCH,
    close_index,
    db_chunk_ids,
    external_ids,
    index,
    index_search,
    max_change,
    sync,
)
from tests.retrieval.weaviate_standin import WeaviateStandIn

pytestmark = pytest.mark.django_db


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
    from apps.ingestion.sources import create_source

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
    from apps.ingestion.sources import create_source
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
    from apps.retrieval.models import IndexCursor
    from apps.retrieval.outbox import log_index_change

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
    from apps.ingestion.sources import create_source
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
    from apps.ingestion.sources import create_source

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
