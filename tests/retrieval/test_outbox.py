"""Compacting the IndexChange outbox (apps/retrieval/outbox.py): old rows go once every external index has applied
them, and an embedded index left behind the compaction rebuilds from the database instead of missing changes."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.accounts.access import AccessScope
from apps.ingestion.models import Chunk, Document
from apps.retrieval.index.embedded import EmbeddedIndex
from apps.retrieval.models import IndexChange, IndexCursor, OutboxCompaction
from apps.retrieval.outbox import compact_outbox, compacted_through, log_index_change, outbox_head

pytestmark = pytest.mark.django_db
EVERYONE = AccessScope(frozenset(), unrestricted=True)


def _age(days: float, **filters):
    IndexChange.objects.filter(**filters).update(created_at=timezone.now() - timedelta(days=days))


def _changes(n: int) -> list[int]:
    docs = ["00000000-0000-0000-0000-000000000001"]  # any document id: the outbox names, the index looks up
    for _ in range(n):
        log_index_change(docs)
    return list(IndexChange.objects.order_by("id").values_list("id", flat=True))[-n:]


def test_rows_past_the_retention_go_and_younger_ones_stay(settings):
    ids = _changes(6)
    _age(10, id__lte=ids[3])
    report = compact_outbox(timedelta(days=7))
    assert report.deleted == 4 and report.through_seq == ids[3] and report.held_by == ""
    assert list(IndexChange.objects.values_list("id", flat=True)) == ids[4:]
    assert compacted_through() == ids[3] and outbox_head() == ids[5]
    mark = OutboxCompaction.objects.get()
    assert mark.rows_deleted == 4 and mark.compacted_at is not None
    again = compact_outbox(timedelta(days=7))  # nothing more is old enough; the watermark never goes back
    assert again.deleted == 0 and compacted_through() == ids[3]
    assert "removed 0 outbox rows" in str(again)


def test_an_external_index_that_has_not_applied_the_rows_holds_them():
    ids = _changes(5)
    _age(30)
    IndexCursor.objects.create(key="weaviate:Behind", seq=ids[1])
    IndexCursor.objects.create(key="weaviate:NeverLoaded", seq=None)  # will import everything: holds nothing
    IndexCursor.objects.create(key="weaviate:Ahead", seq=ids[4])
    report = compact_outbox(timedelta(days=7))
    assert report.deleted == 2 and report.through_seq == ids[1] and report.held_by == "weaviate:Behind"
    assert "held back by index weaviate:Behind" in str(report)
    assert list(IndexChange.objects.values_list("id", flat=True)) == ids[2:]


def test_an_embedded_index_behind_the_compaction_rebuilds_from_the_database(indexed_source, settings):
    settings.INDEX_REFRESH_SECONDS = 3600  # this index only looks when told to
    behind = EmbeddedIndex(settings.DATA_DIR / "behind")
    before = set(behind.chunk_ids())
    doc = Document.objects.order_by("pk").first()
    gone = {str(c) for c in Chunk.objects.filter(document=doc).values_list("pk", flat=True)}
    assert gone and gone <= before
    doc_id = str(doc.pk)
    doc.delete()
    log_index_change([doc_id])  # what a sync writes when a document disappears at its source
    _age(30)
    assert compact_outbox(timedelta(days=7)).deleted >= 1  # the row telling of the deletion is gone
    behind.refresh()
    assert not gone & set(behind.chunk_ids())
    assert set(behind.chunk_ids()) == before - gone
    assert behind._state.seq == outbox_head() == compacted_through()
    built = []
    original = behind._build_from_db
    behind._build_from_db = lambda: built.append(1) or original()
    behind.refresh()  # at the watermark now: nothing to rebuild
    assert built == []


def test_a_snapshot_older_than_the_compaction_is_not_loaded(indexed_source, settings):
    first = EmbeddedIndex(settings.DATA_DIR / "shared")
    first.chunk_ids()
    first.save_snapshot()
    doc = Document.objects.order_by("pk").first()
    gone = {str(c) for c in Chunk.objects.filter(document=doc).values_list("pk", flat=True)}
    doc_id = str(doc.pk)
    doc.delete()
    log_index_change([doc_id])
    _age(30)
    compact_outbox(timedelta(days=7))
    restarted = EmbeddedIndex(settings.DATA_DIR / "shared")
    assert gone and not gone & set(restarted.chunk_ids())
    assert restarted._state.seq == compacted_through()
    fresh = EmbeddedIndex(settings.DATA_DIR / "fresh")
    assert set(fresh.chunk_ids()) == set(restarted.chunk_ids())


def test_command_and_schedule(settings, capsys):
    from ragsite.celery import app

    ids = _changes(3)
    _age(2, id__lte=ids[0])
    call_command("compact_outbox", "--days", "1")
    assert "removed 1 outbox rows" in capsys.readouterr().out
    with pytest.raises(CommandError, match="--days"):
        call_command("compact_outbox", "--days", "-1")
    schedule = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert schedule["maintenance.compact_index_outbox"] == 6 * 3600
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery finds apps/*/tasks.py
    assert "maintenance.compact_index_outbox" in app.tasks
