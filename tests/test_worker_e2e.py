"""The whole slice through real processes: add_source -> sync_source (queued on Redis, run by a real Celery
worker against PostgreSQL) -> chunks and vectors in the DB -> POST /api/v1/search/ with a token."""

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.compliance.audit import verify_chain
from apps.ingestion.models import Chunk, Document, SyncRun
from tests.conftest import token_client

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DEMO = Path(__file__).resolve().parent.parent / "demo"


def test_demo_corpus_through_the_worker(worker, alice, bob, capsys):
    call_command("add_source", "demo", "--path", str(DEMO / "corpus"))
    call_command("sync_source", "demo", "--wait", "--timeout", "300")
    out = capsys.readouterr().out
    assert "succeeded" in out

    run = SyncRun.objects.get()
    files = [p for p in (DEMO / "corpus").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert run.status == "succeeded" and run.items_new == len(files) and run.items_failed == 0
    assert Document.objects.count() == len(files)
    assert Chunk.objects.count() == run.chunks_embedded > len(files)

    # the same corpus again: nothing re-embedded
    call_command("sync_source", "demo", "--wait", "--timeout", "300")
    again = SyncRun.objects.latest("created_at")
    assert again.items_unchanged == len(files) and again.chunks_embedded == 0

    # the worker wrote its index snapshot; this process builds its own from the DB and answers
    queries = json.loads((DEMO / "queries.json").read_text())
    hits = 0
    for q in queries:
        user = alice if q["restricted_to"] in (None, "hr") else None
        if user is None:
            continue
        response = token_client(user).post("/api/v1/search/", {"query": q["query"], "top_k": 5}, format="json")
        assert response.status_code == 200
        uris = [r["uri"] for r in response.json()["results"]]
        hits += any(u.endswith("/" + q["expected"]) for u in uris)
    answerable = sum(q["restricted_to"] in (None, "hr") for q in queries)
    assert hits / answerable >= 0.8, f"only {hits} of {answerable} demo questions found their document in the top 5"

    # finance documents never reach bob
    for q in queries:
        response = token_client(bob).post("/api/v1/search/", {"query": q["query"], "top_k": 20}, format="json")
        assert not any("/finance/" in r["uri"] or "/hr/" in r["uri"] for r in response.json()["results"])
    assert verify_chain().ok


def test_worker_killed_mid_sync_is_reaped_and_the_next_run_completes(worker, roles, tmp_path, settings):
    """SIGKILL the real worker in the middle of a sync: the reaper declares the run lost and starts another, which
    a fresh worker carries to the end with no duplicate and no missing chunk."""
    import time

    from apps.ingestion import sync
    from apps.ingestion.chunking import chunk_text
    from apps.ingestion.embedding import get_embedder
    from apps.ingestion.parsing import parse
    from apps.ingestion.sources import create_source
    from tests.conftest import write_corpus

    paragraphs = [f"Section {p}. The buoy array number {p} reports salinity, pressure and temperature every "
                  f"{p + 5} minutes to the shore station, which checks each reading against the calibration "
                  f"table before it is stored for the monthly report." for p in range(12)]
    files = {f"logs/station-{i:03}.txt": "\n\n".join(f"Station {i}. {text}" for text in paragraphs)
             for i in range(120)}
    corpus = write_corpus(tmp_path / "stations", files)
    source = create_source(name="stations", config={"path": str(corpus)})
    first, _ = sync.request_sync(source)

    written = Document.objects.filter(source=source)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if written.count() >= 5:  # each document commits whole, so this is what survives a kill
            break
        first.refresh_from_db()
        assert first.status in ("pending", "running"), first.message
        time.sleep(0.05)
    else:
        pytest.fail("the sync never got going")
    worker.kill()
    first.refresh_from_db()
    survived = written.count()
    assert first.status == "running" and survived < len(files)  # killed in the middle, and nobody noticed

    settings.SYNC_STALE_SECONDS = 0  # its heartbeat is already "old"
    assert sync.reap_stale_runs() == 1
    first.refresh_from_db()
    assert first.status == "failed" and "worker lost" in first.message
    second = SyncRun.objects.get(source=source, trigger="reaper")

    worker.ensure_running()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        second.refresh_from_db()
        if second.status not in ("pending", "running"):
            break
        time.sleep(0.3)
    assert second.status == "succeeded", second.message
    assert second.items_unchanged == survived and second.items_new + second.items_unchanged == len(files)

    embedder = get_embedder()
    expected = {
        rel: len(chunk_text(parse(rel, text.encode()).text, embedder.count_tokens, settings.CHUNK_TOKENS,
                            settings.CHUNK_OVERLAP_TOKENS, embedder.split_tokens))
        for rel, text in files.items()
    }
    stored = {d.external_id: sorted(d.chunks.values_list("ordinal", flat=True))
              for d in Document.objects.filter(source=source).prefetch_related("chunks")}
    assert set(stored) == set(expected)
    assert all(stored[rel] == list(range(n)) for rel, n in expected.items())
    assert Chunk.objects.filter(document__source=source).count() == sum(expected.values())
