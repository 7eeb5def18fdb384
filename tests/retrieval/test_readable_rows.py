"""readable_chunk_rows, the search's hand-written re-check and feedback read, returns exactly what the ORM form of
the same rule (Chunk.objects.readable_by plus the filters) returns, for random scopes, filters and chunk sets, on
the database the tests run on (PostgreSQL in `make test`)."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from apps.accounts.access import AccessScope
from apps.ingestion.models import (
    Chunk,
    Document,
    DocumentAccess,
    Source,
    chunk_id_for,
    document_id_for,
)
from apps.retrieval.index import IndexFilter
from apps.retrieval.readable import readable_chunk_rows

pytestmark = pytest.mark.django_db

PRINCIPALS = ("authenticated", "group:hr", "group:eng", "user:1", "user:2")
CLASSES = ("public", "internal", "confidential", "restricted")
BASE = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def corpus():
    rng = random.Random(3)
    sources = [Source.objects.create(name=f"s{i}", kind="filesystem", config={"path": "/"}) for i in range(3)]
    chunk_ids = []
    for d in range(40):
        source = rng.choice(sources)
        doc_id = document_id_for(source.pk, f"doc-{d}")
        modified = None if d % 7 == 0 else BASE + timedelta(days=rng.randrange(0, 60), seconds=rng.randrange(86400))
        Document.objects.create(id=doc_id, source=source, external_id=f"doc-{d}", uri=f"file:///{d}",
                                title=f"Document {d}", content_type="text/plain", content_hash=f"{d:064x}",
                                classification=rng.choice(CLASSES), modified_at=modified)
        for principal in rng.sample(PRINCIPALS, rng.randrange(0, 3)):
            DocumentAccess.objects.create(document_id=doc_id, principal=principal)
        for o in range(3):
            model = "other-model" if (d + o) % 11 == 0 else "m"
            chunk = Chunk.objects.create(id=chunk_id_for(doc_id, o), document_id=doc_id, ordinal=o, heading=f"h{o}",
                                         text=f"text {d}.{o}", page=o or None, text_hash="0" * 64,
                                         embedding=bytes([d, o]) * 4, embedding_model=model, embedding_dim=2)
            chunk_ids.append(str(chunk.pk))
    return sources, chunk_ids


def _orm(scope, flt, ids, model=None):
    chunks = Chunk.objects.readable_by(scope).filter(pk__in=[uuid.UUID(c) for c in ids])
    if flt.source_ids is not None:
        chunks = chunks.filter(document__source_id__in=flt.source_ids)
    if flt.classifications is not None:
        chunks = chunks.filter(document__classification__in=flt.classifications)
    if flt.modified_after is not None:
        chunks = chunks.filter(document__modified_at__gte=flt.modified_after)
    if flt.modified_before is not None:
        chunks = chunks.filter(document__modified_at__lt=flt.modified_before)
    if model is not None:
        chunks = chunks.filter(embedding_model=model[0], embedding_dim=model[1])
        return sorted(bytes(e) for e in chunks.values_list("embedding", flat=True))
    return sorted(chunks.values_list("id", "document_id", "document__title", "document__source__name",
                                     "document__uri", "heading", "page", "text"))


def test_equal_to_the_orm_rule(corpus):
    sources, all_ids = corpus
    rng = random.Random(5)
    scopes = [AccessScope(frozenset(), unrestricted=True), AccessScope(frozenset())] + [
        AccessScope(frozenset(rng.sample(PRINCIPALS, k))) for k in (1, 1, 2, 2, 3, 5) for _ in range(3)]
    seen_rows = seen_empty = 0
    for scope in scopes:
        for _ in range(6):
            ids = rng.sample(all_ids, rng.randrange(1, 25)) + [str(uuid.uuid4())]  # and one id that is not there
            after = BASE + timedelta(days=rng.randrange(0, 40)) if rng.random() < 0.4 else None
            before = after + timedelta(days=rng.randrange(1, 30)) if after and rng.random() < 0.5 else None
            flt = IndexFilter(
                frozenset(rng.sample([s.pk for s in sources], rng.randrange(1, 3))) if rng.random() < 0.4 else None,
                frozenset(rng.sample(CLASSES, rng.randrange(1, 4))) if rng.random() < 0.4 else None,
                after, before)
            rows = sorted(readable_chunk_rows(scope, ids, "citation", flt=flt))
            assert rows == _orm(scope, flt, ids), (scope, flt)
            vectors = sorted(e for (e,) in readable_chunk_rows(scope, ids, "embedding", embedding_model=("m", 2)))
            assert vectors == _orm(scope, IndexFilter(), ids, ("m", 2)), scope
            seen_rows += bool(rows)
            seen_empty += not rows
    assert seen_rows > 20 and seen_empty > 5  # both outcomes were exercised


def test_nothing_for_no_ids_or_an_empty_scope(corpus):
    _, ids = corpus
    assert readable_chunk_rows(AccessScope(frozenset(), unrestricted=True), [], "citation") == []
    assert readable_chunk_rows(AccessScope(frozenset()), ids, "citation") == []
    with pytest.raises(ValueError, match="column set"):
        readable_chunk_rows(AccessScope(frozenset(), unrestricted=True), ids, "everything")


def test_equal_on_sqlite_too(tmp_path):
    """The one-machine default database: the same two tests, in a pytest of their own on SQLite."""
    import os
    import subprocess
    import sys

    from django.db import connection

    if connection.vendor == "sqlite":
        pytest.skip("this run is on SQLite already: the tests above are the SQLite run")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATA_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", __file__,
                          "-k", "not sqlite_too"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 passed" in out.stdout
