"""A file-system source that holds odd things: a file name that is not UTF-8, a FIFO, a listing that stalls.

Each must cost one item, recorded on the run with its reason, never the run; and a cancel must reach a run that
is waiting on its connector.
"""

import os
import threading
import time

import pytest
from django.db import connection

from apps.ingestion import sync
from apps.ingestion.connectors.base import ItemError
from apps.ingestion.connectors.filesystem import FileSystemConnector
from apps.ingestion.models import Document, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import sync_now, write_corpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path):
    return write_corpus(tmp_path / "share", {"good.txt": "Buoy calibration happens every spring at the harbour."})


def _bad_name(folder):
    """A real file whose name is the bytes b'bad-\\xff.txt' (not UTF-8), made through the bytes API."""
    path = os.path.join(os.fsencode(folder), b"bad-\xff.txt")
    with open(path, "wb") as handle:
        handle.write(b"Text nobody can find under this name.")
    return path


def test_a_file_name_that_is_not_utf8_fails_that_file_only(folder, roles):
    _bad_name(folder)
    source = create_source(name="share", config={"path": str(folder)})
    run = sync_now(source)
    assert run.status == "partial", run.message
    assert run.items_failed == 1 and run.items_new == 1
    [error] = run.errors
    assert error["item"] == "bad-\\xff.txt"  # readable, and storable as JSON text
    assert "not valid UTF-8" in error["reason"] and "rename" in error["reason"]
    assert list(Document.objects.filter(source=source).values_list("external_id", flat=True)) == ["good.txt"]

    # Later runs work too, a full one included, and pick up new files.
    write_corpus(folder, {"later.txt": "The lighthouse keeper logs each buoy's drift."})
    again = sync_now(source)
    assert again.status == "partial" and again.items_new == 1 and again.items_failed == 1
    full = sync_now(source, full=True)
    assert full.status == "partial" and full.items_failed == 1
    assert set(Document.objects.filter(source=source).values_list("external_id", flat=True)) == {
        "good.txt", "later.txt"}


def test_a_directory_name_that_is_not_utf8_fails_its_files_only(folder, roles):
    directory = os.path.join(os.fsencode(folder), b"dir-\xfe")
    os.mkdir(directory)
    with open(os.path.join(directory, b"inside.txt"), "wb") as handle:
        handle.write(b"Some text in a badly named folder.")
    source = create_source(name="share", config={"path": str(folder)})
    run = sync_now(source)
    assert run.status == "partial" and run.items_new == 1
    assert [e["item"] for e in run.errors] == ["dir-\\xfe/inside.txt"]


def _unblock_readers(fifo, done, after):
    """After ``after`` seconds, open the FIFO for writing and close it, so a reader stuck on it gets an end of
    file: the test then fails on time instead of hanging."""
    if done.wait(after):
        return
    while not done.is_set():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader has it open (ENXIO)
            time.sleep(0.1)


def test_a_fifo_is_skipped_with_its_reason_and_the_sync_finishes(folder, roles):
    os.mkfifo(folder / "pipe.txt")  # nobody writes to it: reading it would block for good
    source = create_source(name="share", config={"path": str(folder)})
    done = threading.Event()
    unblocker = threading.Thread(target=_unblock_readers, args=(folder / "pipe.txt", done, 15))
    unblocker.start()
    started = time.monotonic()
    try:
        run = sync_now(source)
    finally:
        done.set()
        unblocker.join()
    assert time.monotonic() - started < 10, "the sync waited on the FIFO"
    assert run.status == "partial" and run.items_new == 1 and run.items_failed == 1
    [error] = run.errors
    assert error["item"] == "pipe.txt" and "not a regular file" in error["reason"] and "FIFO" in error["reason"]


def test_a_file_replaced_by_a_fifo_after_listing_is_refused_when_read(folder, roles):
    """The type is checked again on the open descriptor, so a swap between listing and reading cannot block."""
    connector = FileSystemConnector({"path": str(folder)})
    [raw] = list(connector.documents())
    os.remove(folder / "good.txt")
    os.mkfifo(folder / "good.txt")
    done = threading.Event()
    unblocker = threading.Thread(target=_unblock_readers, args=(folder / "good.txt", done, 10))
    unblocker.start()
    started = time.monotonic()
    try:
        with pytest.raises(ItemError, match="not a regular file"):
            raw.read()
    finally:
        done.set()
        unblocker.join()
    assert time.monotonic() - started < 5


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_a_run_whose_connector_is_slow_between_documents(folder, roles, monkeypatch):
    """The connector stalls (a hung share) after its first document; a cancel from elsewhere ends the run
    within a heartbeat instead of whenever the connector answers again."""
    monkeypatch.setattr(sync.job, "HEARTBEAT_SECONDS", 1)
    release = threading.Event()
    listed = threading.Event()
    original = FileSystemConnector.documents

    def stalling(connector, since=None):
        for raw in original(connector, since):
            yield raw
            listed.set()
            release.wait(30)  # stands for a listing that does not come back

    monkeypatch.setattr(FileSystemConnector, "documents", stalling)
    write_corpus(folder, {"second.txt": "Never reached while the listing stalls."})
    source = create_source(name="share", config={"path": str(folder)})
    run = SyncRun.objects.create(source=source)

    def cancel_when_stalled():
        listed.wait(30)
        time.sleep(0.5)
        try:
            sync.cancel_sync(SyncRun.objects.get(pk=run.pk))  # as the API would, from another process
        finally:
            connection.close()  # this thread's own connection, or the test database cannot be dropped

    canceller = threading.Thread(target=cancel_when_stalled)
    canceller.start()
    started = time.monotonic()
    try:
        sync.run_sync(run.pk)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        canceller.join()
    run.refresh_from_db()
    assert run.status == "cancelled", run.message
    assert elapsed < 10, f"the cancel took {elapsed:.1f} s"
    assert run.items_seen == 1 and run.message == "cancelled after 1 documents"
    assert not Document.objects.filter(source=source, external_id="second.txt").exists()


def test_a_slow_listing_keeps_beating(folder, roles, monkeypatch):
    """While the connector is slow the heartbeat goes on, so the reaper does not take a live run for dead."""
    monkeypatch.setattr(sync.job, "HEARTBEAT_SECONDS", 0.2)
    original_documents, original_beat = FileSystemConnector.documents, sync._SyncJob._heartbeat
    stalls, beats = [], []

    def slow(connector, since=None):
        for raw in original_documents(connector, since):
            yield raw
            started = time.monotonic()
            time.sleep(1.5)
            stalls.append((started, time.monotonic()))

    def beat(job, force=False):
        original_beat(job, force)
        beats.append((time.monotonic(), job.run.heartbeat_at))

    monkeypatch.setattr(FileSystemConnector, "documents", slow)
    monkeypatch.setattr(sync._SyncJob, "_heartbeat", beat)
    write_corpus(folder, {"second.txt": "Another note about the harbour."})
    source = create_source(name="share", config={"path": str(folder)})
    run = sync_now(source)
    assert run.status == "succeeded", run.message
    start, end = stalls[0]
    saved = {at for when, at in beats if start < when < end}
    assert len(saved) >= 2, "no heartbeat was saved while the connector was slow"


def test_document_ids_do_not_move():
    """The id of any valid external id is still uuid5(namespace, "source:external id") (invariant 2)."""
    import uuid

    from apps.ingestion.models import ID_NAMESPACE, document_id_for

    for source_id, external_id in ((1, "a/é.txt"), (42, "item/7"), ("3", "日本/メモ.md")):
        assert document_id_for(source_id, external_id) == uuid.uuid5(ID_NAMESPACE, f"{source_id}:{external_id}")
    assert document_id_for(1, "bad-\udcff.txt").version == 5  # no UnicodeEncodeError
