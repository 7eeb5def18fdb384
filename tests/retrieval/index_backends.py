"""The vector-index backends the retrieval tests run on (the fixtures, registered by tests/retrieval/conftest.py),
and the helpers test modules import from here.

Backends: ``embedded``; ``weaviate-standin`` (the Weaviate backend's real client code against the wire-level
stand-in in tests/retrieval/weaviate_standin, which is not Weaviate); ``weaviate-live`` (a real Weaviate, when the
WEAVIATE_URL environment variable names one, with WEAVIATE_GRPC_PORT and WEAVIATE_API_KEY if needed; each test
uses its own collection and deletes it).
"""

import os
import uuid
from contextlib import contextmanager

import numpy as np
import pytest

from apps.accounts.access import AccessScope
from tests.conftest import sync_now
from tests.retrieval.weaviate_standin import WeaviateStandIn

SEARCH = "/api/v1/search/"
EVERYONE = AccessScope(frozenset(), unrestricted=True)
LIVE_URL = os.environ.get("WEAVIATE_URL", "")
WEAVIATE_BACKENDS = ["weaviate-standin", "weaviate-live"]
BACKENDS = ["embedded", *WEAVIATE_BACKENDS]


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
    from apps.ingestion.embedding import get_embedder

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
    from apps.ingestion.sources import create_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    return source


@pytest.fixture
def weaviate_handbook(weaviate_backend, corpus_dir, roles):
    from apps.ingestion.sources import create_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync(source)
    return source


def _query_vector(query):
    from apps.ingestion.embedding import get_embedder

    return get_embedder().encode_query(query)


def _bulk_corpus(visible_docs=1, hidden_docs=99, chunks_per_doc=5, query="quarterly harbour tide report"):
    """Documents written straight into the database (vectors derived from the real query vector, so the ranking is
    known): hidden documents are 'internal' and match the query better on both sides; visible ones are
    'restricted'. Returns the visible documents' chunk ids."""
    from apps.ingestion.embedding import get_embedder, vector_to_bytes
    from apps.ingestion.models import Chunk, Document, DocumentAccess, Source, chunk_id_for, document_id_for
    from apps.retrieval.outbox import log_index_change

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
