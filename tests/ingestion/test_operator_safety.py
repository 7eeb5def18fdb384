"""Operator safety: a mass deletion needs a confirmation, a deleted source leaves no cached embeddings behind, a
secret in an HTTP source's URL is not shown, and two stacks on one machine keep their own gunicorn socket."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from django.core.management import call_command

from apps.compliance.models import AuditEvent
from apps.ingestion import sync
from apps.ingestion.models import Chunk, Document, EmbeddingCacheEntry, Source, SyncRun
from apps.ingestion.secrets import MASK
from apps.ingestion.sources import create_source
from tests.conftest import REPO, sync_now, token_client, write_corpus
from tests.factories import UserFactory
from tests.ingestion.json_api import JsonApiServer

pytestmark = pytest.mark.django_db

NOTES = {f"notes/n{i:02}.txt": f"Note {i} about buoy {i} calibration at the harbour." for i in range(12)}


@pytest.fixture
def share(tmp_path):
    return write_corpus(tmp_path / "share", NOTES)


@pytest.fixture
def source(share, roles):
    source = create_source(name="share", config={"path": str(share)})
    assert sync_now(source).status == "succeeded"
    return source


@pytest.fixture
def power(roles):
    return UserFactory(username="pat", groups=["power_user"])


@pytest.fixture
def queued(monkeypatch):
    """Runs requested here are recorded instead of sent to a broker; the test runs them in this process."""
    sent = []
    monkeypatch.setattr("apps.ingestion.tasks.sync_source.delay", lambda run_id: sent.append(run_id))
    return sent


# --- (a) the prune guard --------------------------------------------------------------------------------------


def test_an_emptied_folder_deletes_nothing_without_a_confirmation(source, share):
    shutil.rmtree(share / "notes")  # the share came back empty: unmounted, not deleted
    Source.objects.filter(pk=source.pk).update(checkpoint={"mark": "before"})
    run = sync_now(source)
    assert run.status == "failed"
    assert "refused to delete 12 of 12 documents" in run.message and "--allow-mass-delete" in run.message
    assert "allow_mass_delete" in run.message and "SYNC_PRUNE_MAX_FRACTION" in run.message
    assert run.items_deleted == 0
    assert Document.objects.filter(source=source).count() == 12
    assert Source.objects.get(pk=source.pk).checkpoint == {"mark": "before"}  # not moved past the refusal


def test_the_command_confirms_a_mass_deletion(source, share, queued, django_capture_on_commit_callbacks):
    shutil.rmtree(share / "notes")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("sync_source", "share", "--allow-mass-delete")
    [run_id] = queued
    assert SyncRun.objects.get(pk=run_id).allow_mass_delete
    sync.run_sync(run_id)
    run = SyncRun.objects.get(pk=run_id)
    assert run.status == "succeeded" and run.items_deleted == 12
    assert not Document.objects.filter(source=source).exists()
    assert AuditEvent.objects.filter(action="sync.mass_delete_allowed", object_id=str(source.pk)).exists()


def test_the_api_confirms_a_mass_deletion(source, share, power, queued, django_capture_on_commit_callbacks):
    client = token_client(power)
    refused = client.post(f"/api/v1/sources/{source.pk}/sync/", {"allow_mass_delete": "yes"}, format="json")
    assert refused.status_code == 400 and "allow_mass_delete" in refused.json()["detail"]
    assert not queued
    shutil.rmtree(share / "notes")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/sources/{source.pk}/sync/", {"allow_mass_delete": True}, format="json")
    assert response.status_code == 202
    sync.run_sync(response.json()["sync_run_id"])
    assert SyncRun.objects.get(pk=response.json()["sync_run_id"]).items_deleted == 12
    assert not Document.objects.filter(source=source).exists()


def test_ordinary_deletions_and_small_sources_need_no_confirmation(source, share, tmp_path, roles):
    for i in range(5):  # 5 of 12: under the fraction
        os.remove(share / f"notes/n{i:02}.txt")
    run = sync_now(source)
    assert run.status == "succeeded" and run.items_deleted == 5

    tiny = create_source(name="tiny", config={"path": str(write_corpus(tmp_path / "tiny", {"a.txt": "Alpha note.",
                                                                                           "b.txt": "Beta note."}))})
    assert sync_now(tiny).items_new == 2
    shutil.rmtree(tmp_path / "tiny")
    (tmp_path / "tiny").mkdir()
    run = sync_now(tiny)  # everything, but only 2 documents: under SYNC_PRUNE_MIN_DOCUMENTS
    assert run.status == "succeeded" and run.items_deleted == 2


def test_the_guard_follows_its_settings(source, share, settings):
    settings.SYNC_PRUNE_MAX_FRACTION = 0.2
    for i in range(5):  # 5 of 12 (42 %): over 20 %, but not over 10 documents
        os.remove(share / f"notes/n{i:02}.txt")
    settings.SYNC_PRUNE_MIN_DOCUMENTS = 3
    run = sync_now(source)
    assert run.status == "failed" and "refused to delete 5 of 12" in run.message
    settings.SYNC_PRUNE_MAX_FRACTION = 1.0  # never refuse
    assert sync_now(source).items_deleted == 5


# --- (b) deleting a source clears its cached embeddings --------------------------------------------------------


def test_deleting_a_source_forgets_the_embeddings_only_it_used(source, tmp_path, roles):
    shared_text = NOTES["notes/n00.txt"]
    other = create_source(name="other", config={"path": str(write_corpus(tmp_path / "other",
                                                                         {"notes/n00.txt": shared_text}))})
    assert sync_now(other).status == "succeeded"
    own = set(Chunk.objects.filter(document__source=source).values_list("text_hash", flat=True))
    kept = set(Chunk.objects.filter(document__source=other).values_list("text_hash", flat=True))
    assert kept and kept < own  # the other source shares one note's text
    assert EmbeddingCacheEntry.objects.filter(text_hash__in=own).count() == len(own)

    admin = UserFactory(username="ada", groups=["admin"])
    assert token_client(admin).delete(f"/api/v1/sources/{source.pk}/").status_code == 204
    left = set(EmbeddingCacheEntry.objects.filter(text_hash__in=own).values_list("text_hash", flat=True))
    assert left == kept


# --- (c) a secret in an HTTP source's URL query -----------------------------------------------------------------


API_KEY = "key-h12-0f1e2d3c4b5a"


def test_a_key_in_the_url_query_is_encrypted_masked_and_used(power, roles):
    viewer = UserFactory(username="vera", groups=["readonly"])
    with JsonApiServer() as api:
        api.state.page_size = 100
        url = f"{api.base}/api/articles?api_key={API_KEY}&format=json"
        payload = {"name": "wiki", "kind": "http", "config": {
            "url": url, "items_path": "data.items", "id_field": "id", "title_field": "title",
            "text_fields": ["body"], "backoff_factor": 0.01, "max_retries": 1}}
        response = token_client(power).post("/api/v1/sources/", payload, format="json")
        assert response.status_code == 201, response.content
        source = Source.objects.get(pk=response.json()["id"])
        shown_url = f"{api.base}/api/articles?api_key={MASK}&format={MASK}"
        for client in (token_client(power), token_client(viewer)):
            body = client.get(f"/api/v1/sources/{source.pk}/")
            assert body.status_code == 200 and body.json()["config"]["url"] == shown_url
            assert API_KEY not in client.get("/api/v1/sources/").content.decode()
        assert API_KEY not in json.dumps(source.config)
        assert not any(API_KEY in json.dumps(d) for d in AuditEvent.objects.values_list("data", flat=True))

        # Sending the masked URL back (with another setting changed) keeps the stored key; the connector uses it.
        config = {**token_client(power).get(f"/api/v1/sources/{source.pk}/").json()["config"], "max_retries": 2}
        updated = token_client(power).patch(f"/api/v1/sources/{source.pk}/", {"config": config}, format="json")
        assert updated.status_code == 200, updated.content
        api.state.log.clear()
        run = sync_now(Source.objects.get(pk=source.pk))
        assert run.status == "succeeded", run.message
        assert {query.get("api_key") for path, query, status in api.state.log} == {API_KEY}

        # A new URL with a mask for a parameter the stored URL lacks is refused, naming the field.
        config["url"] = f"{api.base}/api/articles?token={MASK}"
        refused = token_client(power).patch(f"/api/v1/sources/{source.pk}/", {"config": config}, format="json")
        assert refused.status_code == 400 and "url" in json.dumps(refused.json())


# --- (d) gunicorn's control socket under DATA_DIR ---------------------------------------------------------------


def test_gunicorn_control_socket_lives_under_data_dir(tmp_path):
    """As gunicorn itself reads the config: two stacks with two DATA_DIRs get two control sockets."""
    found = []
    for stack in ("stack-a", "stack-b"):
        env = {**os.environ, "DATA_DIR": str(tmp_path / stack)}
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "ragsite/gunicorn.conf.py", "--check-config", "--print-config",
             "ragsite.wsgi"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        [line] = [x for x in result.stdout.splitlines() if x.split("=")[0].strip() == "control_socket"]
        found.append(line.split("=", 1)[1].strip())
    assert found == [str(tmp_path / "stack-a" / "gunicorn.ctl"), str(tmp_path / "stack-b" / "gunicorn.ctl")]


def test_the_migration_seals_urls_saved_before(roles):
    """An HTTP source saved before this change keeps its key in clear until the migration seals it."""
    import importlib

    from django.apps import apps

    from apps.ingestion.secrets import decrypt_config, mask_config

    url = f"https://api.example.com/v1/items?api_key={API_KEY}"
    plain = {"url": url, "items_path": "", "id_field": "id", "text_fields": ["body"]}
    source = Source.objects.create(name="legacy", kind="http", config=plain)
    migration = importlib.import_module("apps.ingestion.migrations.0009_syncrun_allow_mass_delete")
    migration.seal_http_urls(apps, None)
    stored = Source.objects.get(pk=source.pk).config
    assert API_KEY not in json.dumps(stored)
    assert mask_config(stored)["url"] == f"https://api.example.com/v1/items?api_key={MASK}"
    assert decrypt_config(stored)["url"] == url
