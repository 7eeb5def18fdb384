"""Cancelling runs, reaping runs whose worker died, and the one-run-per-source rule."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.compliance.models import AuditEvent
from apps.ingestion import sync
from apps.ingestion.models import Document, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import token_client, write_corpus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def source(tmp_path, roles):
    corpus = write_corpus(tmp_path / "many", {f"notes/n{i:02}.txt": f"Note {i} about buoy {i} calibration."
                                              for i in range(12)})
    return create_source(name="many", config={"path": str(corpus)})


@pytest.fixture
def operator(roles):
    return UserFactory(username="opal", groups=["power_user"])


def test_cancel_a_pending_run(source, operator):
    run, _ = sync.request_sync(source)
    response = token_client(operator).post(f"/api/v1/sync-runs/{run.pk}/cancel/")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert sync.run_sync(run.pk) is None  # a late delivery of its task does nothing
    assert not Document.objects.exists()
    again = token_client(operator).post(f"/api/v1/sync-runs/{run.pk}/cancel/")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="sync.cancel", object_id=str(source.pk)).count() == 1


def test_cancel_a_running_run_stops_it_between_documents(source, monkeypatch):
    monkeypatch.setattr(sync.job, "HEARTBEAT_SECONDS", 0)
    processed = []
    original = sync._SyncJob._process

    def process_then_cancel(job, raw, known_hash):
        original(job, raw, known_hash)
        processed.append(raw.external_id)
        if len(processed) == 3:
            sync.cancel_sync(SyncRun.objects.get(pk=job.run.pk))  # as the API would, from another process

    monkeypatch.setattr(sync._SyncJob, "_process", process_then_cancel)
    run = SyncRun.objects.create(source=source)
    sync.run_sync(run.pk)
    run.refresh_from_db()
    assert run.status == "cancelled" and run.message == "cancelled after 3 documents"
    assert len(processed) == 3  # it stopped at the heartbeat after the third document
    assert Document.objects.count() <= 3  # what was written stays whole; nothing else


def test_reaper_restarts_a_run_whose_worker_died(source, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr("apps.ingestion.tasks.sync_source.delay", lambda run_id: sent.append(run_id))
    old = timezone.now() - timedelta(hours=1)
    dead = SyncRun.objects.create(source=source, status="running", started_at=old, heartbeat_at=old)
    alive = SyncRun.objects.create(source=create_source(name="other", config=source.config), status="running",
                                   started_at=old, heartbeat_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert sync.reap_stale_runs() == 1
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == "failed" and "worker lost" in dead.message
    assert alive.status == "running"
    replacement = SyncRun.objects.get(source=source, status="pending")
    assert replacement.trigger == "reaper" and sent == [replacement.pk]
    # the replacement runs to the end: the corpus is whole
    sync.run_sync(replacement.pk)
    assert Document.objects.filter(source=source).count() == 12
    # the dead run's worker, if it was only slow, stops at its next heartbeat instead of finishing
    assert not sync._finish(dead, "succeeded")
    dead.refresh_from_db()
    assert dead.status == "failed"


def test_reaper_resends_a_pending_run_whose_message_was_lost(source, monkeypatch):
    sent = []
    monkeypatch.setattr("apps.ingestion.tasks.sync_source.delay", lambda run_id: sent.append(run_id))
    run = SyncRun.objects.create(source=source)
    SyncRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert sync.reap_stale_runs() == 1 and sent == [run.pk]


def test_a_stale_running_run_does_not_block_a_new_request(source):
    old = timezone.now() - timedelta(hours=1)
    stuck = SyncRun.objects.create(source=source, status="running", started_at=old, heartbeat_at=old)
    run, created = sync.request_sync(source)
    stuck.refresh_from_db()
    assert created and run.pk != stuck.pk and stuck.status == "failed"


def test_admin_cancels_runs(source, admin_user, client):
    run, _ = sync.request_sync(source)
    finished = SyncRun.objects.create(source=source, status="succeeded")
    client.force_login(admin_user)
    response = client.post("/admin/ingestion/syncrun/", {"action": "cancel", "_selected_action": [run.pk, finished.pk]},
                           follow=True)
    assert response.status_code == 200
    run.refresh_from_db()
    finished.refresh_from_db()
    assert run.status == "cancelled" and finished.status == "succeeded"
    shown = [str(m) for m in response.context["messages"]]
    assert any("has already ended" in m for m in shown) and any(f"sync #{run.pk}: cancelled" in m for m in shown)
