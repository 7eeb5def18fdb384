"""Recovering from a crashed worker or an unreachable broker in seconds, not after SYNC_STALE_SECONDS: a lost run
is not joined, a full request is never merged into a partial run, cancelling a lost run takes effect, a worker
that comes back fails and restarts what its predecessor left running, and a broker error is one line."""

import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.ingestion import sync
from apps.ingestion.models import Document, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import REPO, token_client, write_corpus
from tests.factories import UserFactory

NOTES = {f"notes/n{i:02}.txt": f"Note {i} about buoy {i} calibration." for i in range(12)}


@pytest.fixture
def source(tmp_path, roles):
    return create_source(name="many", config={"path": str(write_corpus(tmp_path / "many", NOTES))})


@pytest.fixture
def sent(monkeypatch):
    """The run ids handed to the broker (no worker in these tests)."""
    sent = []
    monkeypatch.setattr("apps.ingestion.tasks.sync_source.delay", lambda run_id: sent.append(run_id))
    return sent


def _running(source, heartbeat_age: float, **fields) -> SyncRun:
    beat = timezone.now() - timedelta(seconds=heartbeat_age)
    return SyncRun.objects.create(source=source, status="running", started_at=beat, heartbeat_at=beat, **fields)


def _database_url() -> str:
    from django.db import connection

    cfg = connection.settings_dict
    return f"postgres://{cfg['USER']}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"


# --- a lost run is not joined; a full request is not merged into a partial one ---------------------------------


@pytest.mark.django_db
def test_a_run_silent_for_a_few_heartbeats_is_not_joined(source, settings, sent, django_capture_on_commit_callbacks):
    settings.SYNC_LOST_SECONDS = 15
    dead = _running(source, heartbeat_age=20)  # long before SYNC_STALE_SECONDS (600): the reaper would still wait
    with django_capture_on_commit_callbacks(execute=True):
        run, created = sync.request_sync(source, trigger="cli")
    dead.refresh_from_db()
    assert created and run.pk != dead.pk and run.status == "pending" and sent == [run.pk]
    assert dead.status == "failed" and dead.message.startswith("worker lost: no heartbeat for 15 s")
    alive = _running(create_source(name="other", config=source.config), heartbeat_age=5)
    joined, created = sync.request_sync(alive.source)
    assert not created and joined.pk == alive.pk  # a run that beats is still joined


@pytest.mark.django_db
def test_a_full_request_makes_a_pending_run_full(source, sent):
    pending, _ = sync.request_sync(source)
    assert not pending.full
    joined, created = sync.request_sync(source, full=True)
    assert not created and joined.pk == pending.pk and joined.full
    pending.refresh_from_db()
    assert pending.full  # it has listed nothing yet: it now lists everything


@pytest.mark.django_db
def test_a_full_request_while_a_partial_run_runs_is_followed_by_a_full_run(source, monkeypatch, sent,
                                                                         django_capture_on_commit_callbacks):
    first = sync.run_sync(SyncRun.objects.create(source=source).pk)  # everything is indexed and checkpointed
    assert first.status == "succeeded"
    requested = []
    original = sync._SyncJob._process

    def process_then_request_full(job, raw, known_hash):
        original(job, raw, known_hash)
        if not requested:  # as the API would, from another process, while this run is listing
            requested.append(sync.request_sync(source, full=True, trigger="api"))

    monkeypatch.setattr(sync._SyncJob, "_process", process_then_request_full)
    with django_capture_on_commit_callbacks(execute=True):
        partial = sync.run_sync(SyncRun.objects.create(source=source).pk)
    (joined, created), = requested
    assert not created and joined.pk == partial.pk and not joined.full and joined.follow_up_full
    partial.refresh_from_db()
    assert partial.status == "succeeded" and partial.items_unchanged == len(NOTES)  # a partial run did not re-parse
    follow = SyncRun.objects.get(source=source, trigger="follow-up")
    assert follow.full and follow.status == "pending" and sent == [follow.pk]
    monkeypatch.setattr(sync._SyncJob, "_process", original)
    done = sync.run_sync(follow.pk)
    assert done.status == "succeeded" and done.items_updated == len(NOTES)  # the full run re-parsed every one


# --- cancel and worker start-up ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancelling_a_run_whose_worker_is_lost_takes_effect_at_once(source, settings, roles):
    settings.SYNC_LOST_SECONDS = 15
    dead = _running(source, heartbeat_age=20)
    response = token_client(UserFactory(username="opal", groups=["power_user"])).post(
        f"/api/v1/sync-runs/{dead.pk}/cancel/")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    dead.refresh_from_db()
    assert dead.status == "cancelled" and "worker was lost" in dead.message and dead.finished_at
    alive = _running(source, heartbeat_age=1)
    assert sync.cancel_sync(alive).status == "running" and alive.cancel_requested  # it stops at its next beat


@pytest.mark.django_db
def test_worker_start_up_fails_and_restarts_what_its_predecessor_left(source, settings, sent,
                                                                     django_capture_on_commit_callbacks):
    settings.SYNC_LOST_SECONDS = 3600  # only the name rule applies here
    booted = timezone.now()
    mine = _running(source, heartbeat_age=2, claimed_by="w1@host")
    other = _running(create_source(name="other", config=source.config), heartbeat_age=2, claimed_by="w2@host")
    with django_capture_on_commit_callbacks(execute=True):
        assert sync.recover_worker_runs("w1@host", booted) == 1
    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.status == "failed" and "w1@host stopped while running it" in mine.message
    assert other.status == "running"  # another worker's run, still beating
    restarted = SyncRun.objects.get(source=source, trigger="recovery")
    assert restarted.status == "pending" and sent == [restarted.pk]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_sync_and_restarted_restarts_the_run_at_once(worker, roles, tmp_path):
    """SIGKILL the real worker mid-sync and start it again under its name: at start-up it fails the run it died
    with and requests another, which completes; the reaper (SYNC_STALE_SECONDS) is not needed."""
    from tests.conftest import _worker_env
    from tests.processes import kill_hard, start_worker, stop_process

    text = " ".join(f"Sentence {s} of a station log about salinity and pressure." for s in range(60))
    files = {f"logs/station-{i:03}.txt": f"Station {i}. {text}" for i in range(80)}
    source = create_source(name="stations", config={"path": str(write_corpus(tmp_path / "stations", files))})
    worker.kill()  # the session worker has a new name each start; this test needs one it can restart as itself
    env = {**_worker_env(_database_url(), tmp_path), "SYNC_LOST_SECONDS": "3600"}  # so only the name rule applies
    name = f"recovery-{os.getpid()}@%h"
    proc = start_worker(env, tmp_path / "w1.log", name=name)
    try:
        first, _ = sync.request_sync(source)
        deadline = time.monotonic() + 120
        while Document.objects.filter(source=source).count() < 3:
            assert time.monotonic() < deadline, "the sync never got going"
            time.sleep(0.05)
        kill_hard(proc)
        first.refresh_from_db()
        assert first.status == "running" and first.claimed_by.startswith(f"recovery-{os.getpid()}@")
        proc = start_worker(env, tmp_path / "w2.log", name=name)
        deadline = time.monotonic() + 60
        while (first := SyncRun.objects.get(pk=first.pk)).status == "running":
            assert time.monotonic() < deadline, "the restarted worker left its predecessor's run running"
            time.sleep(0.2)
        assert first.status == "failed" and "stopped while running it" in first.message
        second = SyncRun.objects.get(source=source, trigger="recovery")
        deadline = time.monotonic() + 300
        while (second := SyncRun.objects.get(pk=second.pk)).status in SyncRun.ACTIVE:
            assert time.monotonic() < deadline, "the restarted run did not finish"
            time.sleep(0.3)
        assert second.status == "succeeded", second.message
        assert Document.objects.filter(source=source).count() == len(files)
    finally:
        stop_process(proc)


# --- a broker that cannot be reached ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sync_source_with_an_unreachable_broker_says_so_in_one_line_and_fails_the_run(source):
    env = {**os.environ, "DATABASE_URL": _database_url(), "CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "manage.py", "sync_source", "many"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    run = SyncRun.objects.get(source=source)
    assert lines[0].startswith(f"CommandError: sync run #{run.pk} could not be queued: broker unavailable")
    assert run.status == "failed" and "broker unavailable" in run.message and run.finished_at
    nxt, created = sync.request_sync(source)  # the next request (a working broker) does not join it
    assert created and nxt.pk != run.pk


@pytest.mark.django_db(transaction=True)
def test_sync_endpoint_answers_503_when_the_broker_is_unreachable(source, monkeypatch):
    from apps.ingestion.tasks import sync_source

    app = sync_source.app  # the real publish path, to a port nothing listens on (its cached pools dropped)
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # Celery reads it before its own settings
    monkeypatch.setitem(app.conf, "broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr(app, "_pool", None)
    monkeypatch.setattr(app.amqp, "_producer_pool", None)
    client = token_client(UserFactory(username="opal", groups=["power_user"]))
    response = client.post(f"/api/v1/sources/{source.pk}/sync/", {}, format="json")
    assert response.status_code == 503 and "could not be queued: broker unavailable" in response.json()["detail"]
    run = SyncRun.objects.get(source=source)
    assert run.status == "failed" and "broker unavailable" in run.message


@pytest.mark.django_db
def test_sync_source_full_says_a_full_run_follows_the_partial_one_it_found(source, capsys):
    from django.core.management import call_command

    running = _running(source, heartbeat_age=1)
    call_command("sync_source", "many", "--full")
    assert f"sync run #{running.pk} already active (not full); a full run follows it" in capsys.readouterr().out
    running.refresh_from_db()
    assert running.follow_up_full and not running.full and SyncRun.objects.count() == 1
