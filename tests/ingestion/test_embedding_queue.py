"""Embedding in bounded batches on the `embedding` queue.

In this process (the broker replaced by a recorder, so each test decides who embeds a batch): batches are
EMBEDDING_BATCH_CHUNKS long, at most EMBEDDING_MAX_IN_FLIGHT are outstanding, a batch embedded by the task is taken
in, a claim left by a dead process is taken over, a batch deleted under the sync is embedded anyway, the task is a
no-op the second time, and staging rows of dead runs are cleaned up.

With real worker processes (PostgreSQL, Redis, `celery worker`): batches run as `embedding.embed_batch` on the
embedding queue and the in-flight count never passes the bound; a second source's sync finishes while a huge one
runs; a worker SIGKILLed mid-embedding leaves no duplicate or missing chunk after the reaper and the next run; and
a single worker process (the CI set-up) completes a sync of many more batches than the bound without deadlock.
"""

import math
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.utils import timezone

from apps.ingestion import batching, sync
from apps.ingestion.chunking import chunk_text
from apps.ingestion.embedding import embed_with_cache, get_embedder
from apps.ingestion.models import Chunk, Document, EmbeddingBatch, EmbeddingCacheEntry, SyncRun
from apps.ingestion.parsing import parse
from apps.ingestion.sources import create_source
from tests.conftest import _worker_env, sync_now, write_corpus
from tests.processes import kill_hard, start_worker, stop_process


def station_files(count: int, paragraphs: int = 6, prefix: str = "station") -> dict:
    """Files of several chunks each (about 60 tokens a paragraph, 200-token chunks)."""
    body = [f"Section {p}. The buoy array number {p} reports salinity, pressure and temperature every {p + 5} "
            f"minutes to the shore station, which checks each reading against the calibration table before it is "
            f"stored for the monthly report." for p in range(paragraphs)]
    return {f"logs/{prefix}-{i:03}.txt": "\n\n".join(f"{prefix.title()} {i}. {text}" for text in body)
            for i in range(count)}


def expected_chunks(files: dict, settings) -> dict:
    embedder = get_embedder()
    return {
        rel: len(chunk_text(parse(rel, text.encode()).text, embedder.count_tokens, settings.CHUNK_TOKENS,
                            settings.CHUNK_OVERLAP_TOKENS, embedder.split_tokens))
        for rel, text in files.items()
    }


def assert_every_chunk_once(source, files: dict, settings):
    """Every document of the corpus, each with ordinals 0..n-1 exactly once and a vector of the model's size."""
    expected = expected_chunks(files, settings)
    stored = {d.external_id: sorted(d.chunks.values_list("ordinal", flat=True))
              for d in Document.objects.filter(source=source).prefetch_related("chunks")}
    assert set(stored) == set(expected)
    assert all(stored[rel] == list(range(n)) for rel, n in expected.items())
    chunks = Chunk.objects.filter(document__source=source)
    assert chunks.count() == sum(expected.values())
    assert not chunks.exclude(embedding_dim=get_embedder().dimension).exists()
    return sum(expected.values())


# --- in this process ------------------------------------------------------------------------------------------


@pytest.fixture
def small_batches(settings):
    settings.EMBEDDING_BATCH_CHUNKS = 4
    settings.EMBEDDING_MAX_IN_FLIGHT = 2
    settings.EMBEDDING_FLUSH_CHUNKS = 8
    return settings


@pytest.fixture
def queued(monkeypatch):
    """Stands in for the broker in this process: records each batch the sync queues and calls ``on_queue``."""

    # in_flight: the run's staging rows in the database when each batch was queued
    recorder = SimpleNamespace(ids=[], in_flight=[], on_queue=lambda batch_id: None)

    def delay(batch_id):
        batch = EmbeddingBatch.objects.get(pk=batch_id)
        recorder.ids.append(batch_id)
        recorder.in_flight.append(EmbeddingBatch.objects.filter(run_id=batch.run_id).count())
        recorder.on_queue(batch_id)

    monkeypatch.setattr("apps.ingestion.tasks.embed_batch.delay", delay)
    return recorder


@pytest.mark.django_db
def test_batches_are_bounded_and_every_chunk_lands_once(tmp_path, roles, small_batches, queued):
    files = station_files(8)
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "s", files))})
    run = sync_now(source)
    assert run.status == "succeeded", run.message
    total = assert_every_chunk_once(source, files, small_batches)
    assert run.embedding_batches == len(queued.ids) == math.ceil(total / 4) > 2
    assert run.embedding_max_in_flight == 2 and max(queued.in_flight) == 2  # the bound was reached, never passed
    assert run.embedding_batches_queued == 0  # nobody else ran: the sync embedded every batch itself
    assert run.chunks_embedded == total and not EmbeddingBatch.objects.exists()

    again = sync_now(source, full=True)  # everything from the cache, through the same batches
    assert again.chunks_embedded == 0 and again.embedding_cache_hits == total
    assert_every_chunk_once(source, files, small_batches)


@pytest.mark.django_db
def test_batches_embedded_by_the_task_are_taken_in(tmp_path, roles, small_batches, queued):
    files = station_files(6)
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "s", files))})
    ran = []

    def task_runs_every_other(batch_id):  # as a worker process on the embedding queue would
        if len(queued.ids) % 2:
            ran.append(batching.run_batch(batch_id, done_by="queue:embedding"))

    queued.on_queue = task_runs_every_other
    run = sync_now(source)
    assert run.status == "succeeded"
    assert ran and all(ran) and run.embedding_batches_queued == len(ran)
    total = assert_every_chunk_once(source, files, small_batches)
    assert run.chunks_embedded + run.embedding_cache_hits == total
    # the stored vectors are the model's, whoever embedded them
    cached = dict(EmbeddingCacheEntry.objects.values_list("text_hash", "vector"))
    for text_hash, vector in Chunk.objects.filter(document__source=source).values_list("text_hash", "embedding"):
        assert bytes(vector) == bytes(cached[text_hash])
    assert not EmbeddingBatch.objects.exists()


@pytest.mark.django_db
def test_a_claim_left_by_a_dead_process_is_taken_over(tmp_path, roles, small_batches, queued):
    files = station_files(4)
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "s", files))})
    long_ago = timezone.now() - timedelta(seconds=small_batches.EMBEDDING_CLAIM_SECONDS + 60)

    def claimed_then_died(batch_id):
        token, mine = batching.claim([batch_id])
        assert mine == [batch_id]
        EmbeddingBatch.objects.filter(pk=batch_id).update(claimed_at=long_ago)

    queued.on_queue = claimed_then_died
    run = sync_now(source)
    assert run.status == "succeeded" and run.embedding_batches == len(queued.ids) > 1
    assert_every_chunk_once(source, files, small_batches)


@pytest.mark.django_db
def test_a_batch_deleted_under_the_sync_is_embedded_anyway(tmp_path, roles, small_batches, queued):
    files = station_files(3)
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "s", files))})
    queued.on_queue = lambda batch_id: EmbeddingBatch.objects.filter(pk=batch_id).delete()
    run = sync_now(source)
    assert run.status == "succeeded"
    assert_every_chunk_once(source, files, small_batches)


@pytest.mark.django_db
def test_embed_batch_claims_once_and_is_a_no_op_after(tmp_path, roles, settings):
    from apps.ingestion.tasks import embed_batch

    source = create_source(name="stations", config={"path": str(tmp_path)})
    run = SyncRun.objects.create(source=source, status="running")
    texts = ["The shore station checks each reading.", "Salinity is reported every five minutes."]
    batch = EmbeddingBatch.objects.create(run=run, source=source, seq=0, texts=texts)

    held = EmbeddingBatch.objects.create(run=run, source=source, seq=1, texts=texts)
    token, mine = batching.claim([held.pk])
    assert mine == [held.pk] and batching.claim([held.pk])[1] == []  # a fresh claim is exclusive
    assert embed_batch.apply(args=[held.pk]).get() is False

    assert embed_batch.apply(args=[batch.pk]).get() is True
    batch.refresh_from_db()
    expected, _ = embed_with_cache(texts)
    assert batch.status == "done" and batch.embedded + batch.cache_hits == 2
    assert (batching.vectors_of(batch.vectors, 2) == expected).all()
    assert embed_batch.apply(args=[batch.pk]).get() is False  # twice: nothing changes
    assert embed_batch.apply(args=[10**9]).get() is False  # its run ended and the row is gone

    # a claimer that lost its claim (taken over after the lease) writes nothing
    settings.EMBEDDING_CLAIM_SECONDS = 0
    time.sleep(0.01)
    thief, stolen = batching.claim([held.pk])
    assert stolen == [held.pk]
    assert not EmbeddingBatch.objects.filter(pk=held.pk, claim=token).update(status="done")


@pytest.mark.django_db
def test_staging_rows_of_dead_runs_are_deleted(tmp_path, roles, small_batches, queued):
    files = station_files(2)
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "s", files))})
    dead = SyncRun.objects.create(source=source, status="failed")
    EmbeddingBatch.objects.create(run=dead, source=source, seq=0, texts=["left by a killed worker"])
    sync_now(source)  # the next run of the source drops them
    assert not EmbeddingBatch.objects.exists()

    other = create_source(name="other", config={"path": str(tmp_path / "s")})
    ended = SyncRun.objects.create(source=other, status="failed")
    active = SyncRun.objects.create(source=other, status="running", heartbeat_at=timezone.now())
    EmbeddingBatch.objects.create(run=ended, source=other, seq=0, texts=["x"])
    kept = EmbeddingBatch.objects.create(run=active, source=other, seq=0, texts=["y"])
    sync.reap_stale_runs()  # so does the reaper, for sources that never sync again
    assert list(EmbeddingBatch.objects.values_list("pk", flat=True)) == [kept.pk]


# --- real worker processes --------------------------------------------------------------------------------------

BATCH, IN_FLIGHT, FLUSH = 16, 3, 32  # the pool worker's settings (small, so a test corpus makes many batches)


def start_pool(env: dict, log_path: Path, concurrency: int, timeout=120) -> subprocess.Popen:
    """`celery worker` on all four queues with ``concurrency`` pool processes; returns once it is ready."""
    return start_worker(env, log_path, timeout=timeout, concurrency=concurrency)


class Pool:
    def __init__(self, env, log_dir: Path, concurrency: int):
        self.env, self.log_dir, self.concurrency = env, log_dir, concurrency
        self.logs: list[Path] = []
        self.proc = None
        self.ensure_running()

    def ensure_running(self):
        if self.proc is None or self.proc.poll() is not None:
            self.logs.append(self.log_dir / f"pool-{time.monotonic_ns()}.log")
            self.proc = start_pool(self.env, self.logs[-1], self.concurrency)

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def kill(self):
        kill_hard(self.proc)

    def stop(self):
        stop_process(self.proc)


@pytest.fixture(scope="module")
def pool_worker(celery_worker, tmp_path_factory):
    """A worker with two pool processes (the Procfile's concurrency on this machine), and small batches. The
    session's single-process worker is stopped meanwhile so that this one alone runs the tasks; the `worker`
    fixture starts it again for the tests that need it."""
    from django.db import connection

    cfg = connection.settings_dict
    url = f"postgres://{cfg['USER']}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    data_dir = tmp_path_factory.mktemp("pool-data")
    env = _worker_env(url, data_dir)
    env.update({"EMBEDDING_BATCH_CHUNKS": str(BATCH), "EMBEDDING_MAX_IN_FLIGHT": str(IN_FLIGHT),
                "EMBEDDING_FLUSH_CHUNKS": str(FLUSH)})
    celery_worker.stop()
    pool = Pool(env, data_dir, concurrency=2)
    yield pool
    pool.stop()


def wait_for(run: SyncRun, timeout: float, watch=None) -> SyncRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status not in SyncRun.ACTIVE:
            return run
        if watch:
            watch()
        time.sleep(0.1)
    pytest.fail(f"sync #{run.pk} still {run.status} after {timeout} s")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_single_worker_process_cannot_deadlock(worker, roles, tmp_path, settings):
    """CI's set-up: one worker, one pool process, so the sync occupies the only process that could run
    `embedding.embed_batch`. With many more batches than EMBEDDING_MAX_IN_FLIGHT (conftest's worker: 64-chunk
    batches, 8 in flight) it embeds its own batches and completes; their queued tasks find nothing to do later."""
    files = station_files(220, paragraphs=9)
    source = create_source(name="single", config={"path": str(write_corpus(tmp_path / "single", files))})
    run, _ = sync.request_sync(source)
    run = wait_for(run, 600)
    assert run.status == "succeeded", run.message
    total = assert_every_chunk_once(source, files, settings)
    assert total > 64 * settings.EMBEDDING_MAX_IN_FLIGHT  # it had to get past the bound more than once
    assert run.embedding_batches == math.ceil(total / 64) and run.embedding_max_in_flight == 8
    assert run.embedding_batches_queued == 0  # no other process existed to run them
    assert not EmbeddingBatch.objects.filter(run=run).exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_batches_run_on_the_embedding_queue_within_the_bound(pool_worker, roles, tmp_path, settings):
    files = station_files(90)
    source = create_source(name="bounded", config={"path": str(write_corpus(tmp_path / "bounded", files))})
    run, _ = sync.request_sync(source)
    observed = []

    def watch():  # the staging rows of the run, seen from outside the worker while it runs
        observed.append(EmbeddingBatch.objects.filter(run=run).count())

    run = wait_for(run, 600, watch)
    assert run.status == "succeeded", run.message
    total = assert_every_chunk_once(source, files, settings)
    assert run.embedding_batches == math.ceil(total / BATCH) > 3 * IN_FLIGHT
    assert run.embedding_max_in_flight == IN_FLIGHT  # reached, and never more (it is a running maximum)
    assert max(observed) <= IN_FLIGHT and max(observed) >= 1
    # the second pool process ran some of them as embedding.embed_batch, delivered on the embedding queue
    assert run.embedding_batches_queued >= 1, pool_worker.log_text()[-3000:]
    assert re.search(r"Task embedding\.embed_batch\[[0-9a-f-]+\] succeeded in [0-9.]+s: True", pool_worker.log_text())
    assert not EmbeddingBatch.objects.filter(run=run).exists()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_second_source_progresses_while_a_huge_one_runs(pool_worker, roles, tmp_path, settings):
    huge_files = station_files(400, prefix="huge")
    small_files = station_files(5, prefix="small")
    huge = create_source(name="huge", config={"path": str(write_corpus(tmp_path / "huge", huge_files))})
    small = create_source(name="small", config={"path": str(write_corpus(tmp_path / "small", small_files))})
    big_run, _ = sync.request_sync(huge)
    deadline = time.monotonic() + 120
    while not Document.objects.filter(source=huge).exists():  # well under way
        assert time.monotonic() < deadline, "the huge sync never got going"
        time.sleep(0.1)
    small_run, _ = sync.request_sync(small)
    small_run = wait_for(small_run, 300)
    big_run.refresh_from_db()
    assert small_run.status == "succeeded", small_run.message
    assert big_run.status == "running", "the huge sync ended first: the test proves nothing; make it bigger"
    assert Document.objects.filter(source=huge).count() < len(huge_files)
    assert_every_chunk_once(small, small_files, settings)
    big_run = wait_for(big_run, 900)
    assert big_run.status == "succeeded", big_run.message
    assert big_run.embedding_max_in_flight <= IN_FLIGHT
    assert_every_chunk_once(huge, huge_files, settings)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_embedding_leaves_no_duplicate_or_missing_chunk(pool_worker, roles, tmp_path, settings):
    files = station_files(200, prefix="killed")
    source = create_source(name="killed", config={"path": str(write_corpus(tmp_path / "killed", files))})
    first, _ = sync.request_sync(source)
    written = Document.objects.filter(source=source)
    deadline = time.monotonic() + 180
    while True:  # some documents written, and a batch being embedded right now
        assert time.monotonic() < deadline, "never caught a batch being embedded"
        first.refresh_from_db()
        assert first.status == "running" or first.status == "pending", first.message
        if written.count() >= 3 and EmbeddingBatch.objects.filter(run=first, status="claimed").exists():
            break
        time.sleep(0.02)
    pool_worker.kill()
    survived = written.count()
    first.refresh_from_db()
    assert first.status == "running" and survived < len(files)
    assert EmbeddingBatch.objects.filter(run=first).exists()  # staging rows left behind

    settings.SYNC_STALE_SECONDS = 0
    assert sync.reap_stale_runs() == 1
    first.refresh_from_db()
    assert first.status == "failed" and "worker lost" in first.message
    assert not EmbeddingBatch.objects.filter(run=first).exists()  # the reaper dropped them
    second = SyncRun.objects.get(source=source, trigger="reaper")

    pool_worker.ensure_running()
    second = wait_for(second, 600)
    assert second.status == "succeeded", second.message
    assert second.items_unchanged == survived and second.items_new + second.items_unchanged == len(files)
    assert_every_chunk_once(source, files, settings)
    assert not EmbeddingBatch.objects.exists()
