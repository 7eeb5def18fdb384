"""Classification labels: from the source, overridden per directory by the access sidecar; a new label re-indexes
the document from cached embeddings; a bad label fails closed."""

import json

import pytest

from apps.ingestion.models import Document, DocumentAccess, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import sync_now

pytestmark = pytest.mark.django_db


def _labels(source):
    return dict(Document.objects.filter(source=source).values_list("external_id", "classification"))


def test_sidecar_labels_a_directory_and_the_source_labels_the_rest(corpus_dir, roles):
    (corpus_dir / "it" / ".ragsite-access.json").write_text(json.dumps({"classification": "confidential"}))
    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    source.classification = "public"
    source.save()
    assert sync_now(source).status == SyncRun.SUCCEEDED
    labels = _labels(source)
    assert labels["it/vpn.md"] == "confidential"
    assert labels["hr/parental-leave.md"] == "public"  # hr's sidecar names groups only: the label is inherited
    # ...and the groups-only sidecar still restricts hr/, the classification-only one leaves it/ open.
    readers = dict(DocumentAccess.objects.values_list("document__external_id", "principal"))
    assert readers["hr/parental-leave.md"] == "group:hr"
    assert readers["it/vpn.md"] == "authenticated"


def test_a_new_label_reindexes_without_embedding(corpus_dir, roles):
    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync_now(source)
    assert _labels(source)["it/vpn.md"] == "internal"  # the default
    (corpus_dir / "it" / ".ragsite-access.json").write_text(json.dumps({"classification": "restricted"}))
    run = sync_now(source)
    assert run.counts["updated"] == 1 and run.counts["unchanged"] == 3
    assert run.chunks_embedded == 0 and run.embedding_cache_hits >= 1
    assert _labels(source)["it/vpn.md"] == "restricted"


def test_an_unknown_label_fails_the_directory_closed(corpus_dir, roles):
    (corpus_dir / "it" / ".ragsite-access.json").write_text(json.dumps({"classification": "top-secret"}))
    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    run = sync_now(source)
    assert run.counts["failed"] == 1 and run.counts["new"] == 3
    assert "classification must be one of public, internal, confidential, restricted" in run.errors[0]["reason"]
    assert "it/vpn.md" not in _labels(source)


def test_source_classification_through_the_api(corpus_dir, roles):
    from tests.conftest import token_client
    from tests.factories import UserFactory

    client = token_client(UserFactory(username="pat", groups=["power_user"]))
    created = client.post("/api/v1/sources/", {"name": "secret-stuff", "config": {"path": str(corpus_dir)},
                                               "classification": "confidential"}, format="json")
    assert created.status_code == 201 and created.json()["classification"] == "confidential"
    bad = client.post("/api/v1/sources/", {"name": "x", "config": {"path": str(corpus_dir)},
                                           "classification": "secret"}, format="json")
    assert bad.status_code == 400 and bad.json()["detail"].startswith("classification:")


def test_relabelling_a_source_queues_a_full_pass(corpus_dir, roles, django_capture_on_commit_callbacks):
    from apps.ingestion.sources import update_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    sync_now(source)
    with django_capture_on_commit_callbacks(execute=False):
        update_source(source, classification="confidential")
    run = SyncRun.objects.filter(source=source, status=SyncRun.PENDING).get()
    assert run.full and run.trigger == "access-change"
    from apps.ingestion.sync import run_sync

    run_sync(run.pk)
    assert set(_labels(source).values()) == {"confidential"}


def test_add_source_command_takes_a_classification(corpus_dir, roles):
    from django.core.management import CommandError, call_command

    call_command("add_source", "labelled", "--path", str(corpus_dir), "--classification", "public")
    from apps.ingestion.models import Source

    assert Source.objects.get(name="labelled").classification == "public"
    with pytest.raises(CommandError, match="classification: must be one of"):
        call_command("add_source", "badly-labelled", "--path", str(corpus_dir), "--classification", "secret")
