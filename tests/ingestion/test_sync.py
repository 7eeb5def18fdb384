"""The sync service, run in this process: incremental, idempotent, deletions propagate, bad input loses nothing."""


import pytest

from apps.ingestion.models import (
    Chunk,
    Document,
    DocumentAccess,
    EmbeddingCacheEntry,
    SyncRun,
    chunk_id_for,
    document_id_for,
)
from apps.ingestion.sources import create_source
from apps.retrieval.models import IndexChange
from tests.conftest import sync_now, write_corpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def source(corpus_dir, roles):
    return create_source(name="handbook", config={"path": str(corpus_dir)})


def test_first_sync_indexes_everything(source):
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED
    assert run.counts["seen"] == 4 and run.counts["new"] == 4 and run.counts["failed"] == 0
    assert Document.objects.filter(source=source).count() == 4
    chunks = Chunk.objects.filter(document__source=source)
    assert chunks.count() == run.chunks_embedded > 4
    chunk = chunks.get(document__external_id="it/vpn.md", ordinal=0)
    assert chunk.id == chunk_id_for(document_id_for(source.pk, "it/vpn.md"), 0)
    assert chunk.embedding_dim == 384 and len(bytes(chunk.embedding)) == 384 * 4
    assert chunk.embedding_model == "all-MiniLM-L6-v2"
    # readers: the sidecar restricts hr/, everything else is for every signed-in user
    principals = dict(DocumentAccess.objects.values_list("document__external_id", "principal"))
    assert principals["hr/parental-leave.md"] == "group:hr"
    assert principals["it/vpn.md"] == "authenticated"
    html = Document.objects.get(external_id="policies/security.html")
    assert html.title == "Information security" and html.content_type == "text/html"
    assert html.uri.startswith("file://")


def test_unchanged_documents_cost_a_hash_check(source):
    sync_now(source)
    before = list(Chunk.objects.order_by("id").values_list("id", "text_hash", "created_at"))
    changes = IndexChange.objects.count()
    run = sync_now(source)
    assert run.counts == {"seen": 4, "new": 0, "updated": 0, "unchanged": 4, "deleted": 0, "failed": 0,
                          "chunks_embedded": 0, "embedding_cache_hits": 0}
    assert list(Chunk.objects.order_by("id").values_list("id", "text_hash", "created_at")) == before
    assert IndexChange.objects.count() == changes


def test_changed_document_reuses_cached_embeddings(source, corpus_dir):
    sync_now(source)
    vpn = corpus_dir / "it/vpn.md"
    vpn.write_text(vpn.read_text() + "\n\n## Support\n\nCall extension 4400 for help.")
    run = sync_now(source)
    assert run.counts["updated"] == 1 and run.counts["unchanged"] == 3
    assert run.embedding_cache_hits >= 1  # the unchanged sections were not embedded again
    assert run.chunks_embedded >= 1
    assert Chunk.objects.filter(document__external_id="it/vpn.md", text__contains="extension 4400").exists()


def test_full_resync_embeds_nothing_new(source):
    sync_now(source)
    cached = EmbeddingCacheEntry.objects.count()
    run = sync_now(source, full=True)
    assert run.counts["updated"] == 4 and run.chunks_embedded == 0
    assert run.embedding_cache_hits == Chunk.objects.count()
    assert EmbeddingCacheEntry.objects.count() == cached


def test_deleted_file_is_pruned_from_db_and_index(source, corpus_dir):
    from apps.retrieval.index import get_index

    sync_now(source)
    doc = Document.objects.get(external_id="policies/expenses.txt")
    chunk_ids = {str(c) for c in doc.chunks.values_list("id", flat=True)}
    assert chunk_ids <= set(get_index().chunk_ids())
    (corpus_dir / "policies/expenses.txt").unlink()
    run = sync_now(source)
    assert run.counts["deleted"] == 1
    assert not Document.objects.filter(pk=doc.pk).exists()
    assert not Chunk.objects.filter(id__in=chunk_ids).exists()
    get_index().refresh()
    assert not chunk_ids & set(get_index().chunk_ids())


def test_sidecar_change_rewrites_readers_without_reembedding(source, corpus_dir):
    sync_now(source)
    (corpus_dir / "hr/.ragsite-access.json").write_text('{"groups": ["hr", "finance"]}')
    run = sync_now(source)
    assert run.counts["updated"] == 1 and run.chunks_embedded == 0
    readers = set(DocumentAccess.objects.filter(document__external_id="hr/parental-leave.md")
                  .values_list("principal", flat=True))
    assert readers == {"group:hr", "group:finance"}


def test_bad_files_fail_alone_and_lose_nothing(source, corpus_dir, settings):
    sync_now(source)
    kept = Document.objects.get(external_id="policies/expenses.txt")
    kept_chunks = set(kept.chunks.values_list("id", "text_hash"))
    write_corpus(corpus_dir, {
        "bad/empty.txt": b"",
        "bad/image.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + bytes(range(256)),
        "bad/undecodable.md": bytes(range(1, 256)) * 8,  # no NUL, yet no text encoding explains it
        # an indexed document turns into garbage: its old chunks must stay
        "policies/expenses.txt": b"\x00\x01\x02 not text any more",
    })
    huge = corpus_dir / "bad/huge.html"
    with huge.open("wb") as fh:  # 50 MB, over the default 20 MB limit
        fh.write(b"<html><body><p>" + b"x" * (50 * 1024 * 1024) + b"</p></body></html>")
    run = sync_now(source)
    assert run.status == SyncRun.PARTIAL
    reasons = {e["item"]: e["reason"] for e in run.errors}
    assert "empty document" in reasons["bad/empty.txt"]
    assert "binary content" in reasons["bad/image.txt"]
    assert "unknown text encoding" in reasons["bad/undecodable.md"]
    assert "over the 20,971,520-byte limit" in reasons["bad/huge.html"]
    assert "binary content" in reasons["policies/expenses.txt"]
    assert run.counts["failed"] == 5 and run.counts["unchanged"] == 3
    kept.refresh_from_db()
    assert set(kept.chunks.values_list("id", "text_hash")) == kept_chunks
    assert "binary content" in kept.last_error
    assert "5 of 8 documents failed" in run.message


def test_missing_source_path_fails_the_run_and_prunes_nothing(source, corpus_dir):
    sync_now(source)
    documents = Document.objects.count()
    corpus_dir.rename(corpus_dir.with_name("moved"))
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == f"source path {corpus_dir} does not exist"
    assert Document.objects.count() == documents


def test_unreadable_and_escaping_links_are_recorded(source, corpus_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("a file outside the source")
    (corpus_dir / "policies/dangling.txt").symlink_to(corpus_dir / "policies/gone.txt")
    (corpus_dir / "policies/escape.txt").symlink_to(outside)
    run = sync_now(source)
    reasons = {e["item"]: e["reason"] for e in run.errors}
    assert reasons["policies/dangling.txt"] == "cannot stat file: No such file or directory"
    assert reasons["policies/escape.txt"] == "symbolic link points outside the source"
    assert not Document.objects.filter(external_id="policies/escape.txt").exists()
    assert run.counts["new"] == 4


def test_a_run_is_claimed_once(source):
    from apps.ingestion.sync import run_sync

    run = sync_now(source)
    assert run_sync(run.pk) is None  # already done: a second delivery is a no-op
    assert SyncRun.objects.get(pk=run.pk).counts == run.counts


def test_request_sync_joins_an_active_run(source):
    from apps.ingestion.sync import request_sync

    first, created = request_sync(source)
    second, created_again = request_sync(source)
    assert created and not created_again and first.pk == second.pk


def test_a_document_the_database_refuses_fails_alone(source, monkeypatch):
    """Documents are written in batches; one the database refuses is retried alone and recorded, the rest land."""
    from django.db import DataError

    real = type(Chunk.objects).bulk_create
    refused = []

    def refuse_vpn(manager, objs, *args, **kwargs):
        objs = list(objs)
        if manager.model is Chunk and any("GateKeeper" in c.text for c in objs):
            refused.append(len(objs))
            raise DataError("value too long for the column (simulated)")
        return real(manager, objs, *args, **kwargs)

    monkeypatch.setattr(type(Chunk.objects), "bulk_create", refuse_vpn)
    run = sync_now(source)
    assert len(refused) == 2  # once in the batch, once alone
    assert run.status == SyncRun.PARTIAL
    assert {e["item"]: e["reason"] for e in run.errors} == {
        "it/vpn.md": "database refused the document: value too long for the column (simulated)"
    }
    assert set(Document.objects.values_list("external_id", flat=True)) == {
        "policies/expenses.txt", "policies/security.html", "hr/parental-leave.md"
    }
    assert not Chunk.objects.filter(document__external_id="it/vpn.md").exists()


def test_deleted_and_replaced_text_leaves_the_embedding_cache(source, corpus_dir):
    sync_now(source)
    gone = set(Chunk.objects.filter(document__external_id="policies/expenses.txt").values_list("text_hash", flat=True))
    assert EmbeddingCacheEntry.objects.filter(text_hash__in=gone).count() == len(gone)
    (corpus_dir / "policies/expenses.txt").unlink()
    vpn = corpus_dir / "it/vpn.md"
    vpn.write_text(vpn.read_text().replace("ten minutes", "five minutes"))
    old_vpn = set(Chunk.objects.filter(document__external_id="it/vpn.md").values_list("text_hash", flat=True))
    run = sync_now(source)
    assert run.counts["deleted"] == 1 and run.counts["updated"] == 1
    new_vpn = set(Chunk.objects.filter(document__external_id="it/vpn.md").values_list("text_hash", flat=True))
    assert not EmbeddingCacheEntry.objects.filter(text_hash__in=gone).exists()
    assert not EmbeddingCacheEntry.objects.filter(text_hash__in=old_vpn - new_vpn).exists()
    assert EmbeddingCacheEntry.objects.filter(text_hash__in=new_vpn).count() == len(new_vpn)
    assert old_vpn & new_vpn  # the unchanged section kept its entry (and was a cache hit)
