"""EMBEDDING_MODEL changes: vectors of two models are never compared. Search serves hybrid requests lexical-only
(saying so) and refuses dense ones with a 503 until `manage.py reembed` has re-embedded the chunks of the old
model; then everything is dense again. The second model is the bundled all-MiniLM-L6-v2 under another name (a
symlinked directory: a real second configuration, loaded offline), and a vector of another dimension."""

import pytest
from django.core.management import call_command

from tests.conftest import token_client
from tests.retrieval.index_backends import close_index, external_ids, index

pytestmark = pytest.mark.django_db
SEARCH = "/api/v1/search/"


@pytest.fixture
def renamed_model(tmp_path):
    from apps.ingestion.embedding import model_path

    link = tmp_path / "minilm-renamed"
    link.symlink_to(model_path(), target_is_directory=True)
    return link


def test_model_change_is_detected_served_lexical_then_reembedded(
        handbook, backend, bob, settings, renamed_model, capsys):  # noqa: F811 - fixtures
    from apps.ingestion.embedding import get_embedder
    from apps.ingestion.models import Chunk

    total = Chunk.objects.count()
    assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {"all-MiniLM-L6-v2"}
    settings.EMBEDDING_MODEL = str(renamed_model)
    close_index()  # a process started with the new setting
    assert get_embedder().name == "minilm-renamed"
    assert index().stale_chunks() == total

    client = token_client(bob)
    body = {"query": "GateKeeper badge number", "top_k": 3, "explain": True}
    response = client.post(SEARCH, body, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["served_mode"] == "lexical"
    assert "reembed" in data["warnings"][0] and "minilm-renamed" in data["warnings"][0]
    assert data["results"][0]["uri"].endswith("it/vpn.md")  # still found, by its words
    assert all(r["explain"]["dense"] is None for r in data["results"])  # no dense score taken

    dense = client.post(SEARCH, {"query": "How do I connect to the VPN from home?", "mode": "dense"}, format="json")
    assert dense.status_code == 503
    assert "dense search is off" in dense.json()["detail"] and "reembed" in dense.json()["detail"]

    component = client.get("/readyz").json()["components"]["vector_index"]
    assert component["stale_vectors"] == total and component["embedding_model"] == "minilm-renamed"

    call_command("reconcile_index")  # the old model's chunks are indexed (lexically): no drift, but said
    out = capsys.readouterr().out
    assert "missing 0, orphaned 0, duplicates 0" in out
    assert f"{total} chunks carry vectors of another embedding model" in out

    call_command("reembed", "--dry-run")
    assert f"{total} chunks of 4 documents would be re-embedded" in capsys.readouterr().out
    call_command("reembed", "--batch", "3")
    out = capsys.readouterr().out
    assert f"re-embedded {total} chunks of 4 documents with minilm-renamed" in out and "0 chunks of another" in out
    assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {"minilm-renamed"}
    assert index().stale_chunks() == 0

    response = client.post(SEARCH, {"query": "How do I connect to the VPN from home?", "mode": "dense", "top_k": 1},
                           format="json")
    assert response.status_code == 200 and response.json()["served_mode"] == "dense"
    assert response.json()["results"][0]["uri"].endswith("it/vpn.md")
    assert client.post(SEARCH, {"query": "VPN"}, format="json").json()["served_mode"] == "hybrid"

    call_command("reembed")  # nothing left: idempotent
    assert "re-embedded 0 chunks of 0 documents" in capsys.readouterr().out


def test_vector_of_another_dimension_is_stale(handbook, backend, bob):  # noqa: F811 - fixtures
    """Same model name, different dimension (a truncated vector): never compared, and reembed repairs it."""
    import numpy as np

    from apps.ingestion.models import Chunk
    from apps.retrieval.outbox import log_index_change

    chunk = Chunk.objects.filter(document__external_id="it/vpn.md").order_by("ordinal").first()
    truncated = np.frombuffer(bytes(chunk.embedding), dtype="<f4")[:64]
    Chunk.objects.filter(pk=chunk.pk).update(embedding=(truncated / np.linalg.norm(truncated)).astype("<f4").tobytes(),
                                             embedding_dim=64)
    log_index_change([chunk.document_id])
    index().refresh()
    assert index().stale_chunks() == 1
    client = token_client(bob)
    assert client.post(SEARCH, {"query": "VPN", "mode": "dense"}, format="json").status_code == 503

    call_command("reembed")
    assert Chunk.objects.get(pk=chunk.pk).embedding_dim == 384
    assert index().stale_chunks() == 0
    hits = client.post(SEARCH, {"query": "How do I connect to the VPN from home?", "mode": "dense", "top_k": 1},
                       format="json").json()["results"]
    assert hits[0]["uri"].endswith("it/vpn.md")


def test_embedded_index_never_scores_a_stale_vector(indexed_source, settings, renamed_model):
    """Below the search service too: the embedded index gives stale rows no dense score at all (Weaviate holds
    them without a vector)."""
    from apps.accounts.access import AccessScope
    from apps.ingestion.embedding import get_embedder

    settings.EMBEDDING_MODEL = str(renamed_model)
    close_index()
    vector = get_embedder().encode_query("VPN")
    everyone = AccessScope(frozenset(), unrestricted=True)
    assert index().search(vector, everyone, 5, mode="dense") == []
    lexical = index().search(None, everyone, 5, query="GateKeeper badge", mode="lexical")
    assert external_ids(h.chunk_id for h in lexical) == ["it/vpn.md"]
