"""POST /api/v1/sources/{id}/webhook/: HMAC-signed change events. A push source stores and (through the ordinary
sync) indexes what it is sent; any other kind syncs. Every refusal is audited and leaves nothing behind."""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.compliance.audit import verify_chain
from apps.compliance.models import AuditEvent
from apps.ingestion import sync
from apps.ingestion.changes import sign
from apps.ingestion.models import Document, DocumentAccess, PushedDocument, Source, SyncRun, WebhookDelivery
from apps.ingestion.secrets import MASK, decrypt_config, is_secret
from apps.ingestion.sources import create_source
from tests.conftest import token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SECRET = "whsec-h6-0123456789abcdef"
OTHER_SECRET = "whsec-h6-fedcba9876543210"
PUSHED = ("Harbour crane 7 is serviced every second Tuesday by the night shift; the hydraulic hoses are "
          "replaced each spring.")


@pytest.fixture
def push_source(roles):
    return create_source(name="kb", kind="push", config={"webhook_secret": SECRET})


@pytest.fixture
def power(roles):
    return UserFactory(username="pat", groups=["power_user"])


def deliver(source, payload=None, *, secret=SECRET, timestamp=None, signature=None, body=None, omit=()):
    body = body if body is not None else json.dumps(payload).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {"HTTP_X_RAGSITE_TIMESTAMP": ts,
               "HTTP_X_RAGSITE_SIGNATURE": signature if signature is not None else sign(secret, ts, body)}
    for name in omit:
        headers.pop(name)
    return APIClient().post(f"/api/v1/sources/{source.pk}/webhook/", data=body, content_type="application/json",
                            **headers)


def upsert(external_id, content=PUSHED, **fields):
    return {"type": "upsert", "id": external_id, "content": content, **fields}


def run_now(response):
    """Carry out the run the webhook asked for, in this process (the worker's code path)."""
    run = sync.run_sync(response.json()["sync_run_id"])
    assert run is not None
    run.refresh_from_db()
    return run


def search(user, query, top_k=5):
    response = token_client(user).post("/api/v1/search/", {"query": query, "top_k": top_k}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def nothing_stored():
    return not PushedDocument.objects.exists() and not SyncRun.objects.exists() and not Document.objects.exists()


def refusals(reason=None):
    events = AuditEvent.objects.filter(action="webhook.refused")
    return events.filter(data__reason=reason) if reason else events


def test_signed_push_is_stored_indexed_and_searchable(push_source, bob):
    response = deliver(push_source, {"events": [upsert("crane-7", title="Crane maintenance",
                                                       uri="https://kb.example.com/crane-7")]})
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 1
    pushed = PushedDocument.objects.get(source=push_source)
    assert pushed.external_id == "crane-7" and pushed.content == PUSHED and pushed.groups is None

    run = run_now(response)
    assert run.trigger == "webhook" and run.status == "succeeded" and run.items_new == 1, (run.message, run.errors)
    results = search(bob, "When is the harbour crane serviced?")
    assert results and results[0]["document_title"] == "Crane maintenance"
    assert "second Tuesday" in results[0]["text"] and results[0]["uri"] == "https://kb.example.com/crane-7"
    assert results[0]["source"] == "kb"
    received = AuditEvent.objects.get(action="changes.received")
    assert received.actor_name == "webhook" and received.data["upserts"] == 1 and received.data["sync_run"] == run.pk
    assert not refusals().exists() and verify_chain().ok

    # the same content again is accepted and costs a hash comparison, not an embedding (a new delivery_id: the
    # same body signed in the same second would otherwise be, rightly, a replay)
    again = deliver(push_source, {"events": [upsert("crane-7", title="Crane maintenance",
                                                    uri="https://kb.example.com/crane-7")], "delivery_id": "again"})
    assert again.status_code == 202
    second = run_now(again)
    assert second.items_seen == 1 and second.items_unchanged == 1 and second.chunks_embedded == 0

    # a new title (or link) with the same text re-indexes it: titles are part of what is embedded and shown
    renamed = run_now(deliver(push_source, {"events": [upsert("crane-7", title="Crane 7 servicing")]}))
    assert renamed.items_updated == 1
    document = Document.objects.get()
    assert document.title == "Crane 7 servicing" and document.uri == "push://kb/crane-7"


def _tampered(source):
    body = json.dumps({"events": [upsert("a")]}).encode()
    ts = str(int(time.time()))
    return {"body": body.replace(b'"a"', b'"b"'), "timestamp": ts, "signature": sign(SECRET, ts, body)}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing signature", "missing_signature"),
        ("missing timestamp", "missing_timestamp"),
        ("not sha256=hex", "bad_signature"),
        ("body changed after signing", "bad_signature"),
        ("another source's secret", "bad_signature"),
        ("signed for another timestamp", "bad_signature"),
        ("six minutes old", "stale_timestamp"),
        ("six minutes ahead", "stale_timestamp"),
    ],
)
def test_refused_deliveries_are_audited_and_change_nothing(push_source, case, reason):
    payload = {"events": [upsert("crane-7")]}
    now = int(time.time())
    if case == "missing signature":
        response = deliver(push_source, payload, omit=["HTTP_X_RAGSITE_SIGNATURE"])
    elif case == "missing timestamp":
        response = deliver(push_source, payload, omit=["HTTP_X_RAGSITE_TIMESTAMP"])
    elif case == "not sha256=hex":
        response = deliver(push_source, payload, signature="sha1=" + "0" * 40)
    elif case == "body changed after signing":
        response = deliver(push_source, **_tampered(push_source))
    elif case == "another source's secret":
        create_source(name="other", kind="push", config={"webhook_secret": OTHER_SECRET})
        response = deliver(push_source, payload, secret=OTHER_SECRET)
    elif case == "signed for another timestamp":
        body = json.dumps(payload).encode()
        response = deliver(push_source, body=body, timestamp=now, signature=sign(SECRET, now - 1, body))
    elif case == "six minutes old":
        response = deliver(push_source, payload, timestamp=now - 360)  # correctly signed, but old
    else:
        response = deliver(push_source, payload, timestamp=now + 360)
    assert response.status_code == 401, response.content
    assert response.json()["detail"] and "HMAC-SHA256" in response["WWW-Authenticate"]
    assert refusals(reason).count() == 1
    event = refusals(reason).get()
    assert event.object_type == "source" and event.object_id == str(push_source.pk) and event.ip == "127.0.0.1"
    assert nothing_stored() and not WebhookDelivery.objects.exists()


def test_the_same_delivery_twice_is_a_replay(push_source):
    body = json.dumps({"events": [upsert("crane-7")]}).encode()
    ts = int(time.time())
    first = deliver(push_source, body=body, timestamp=ts)
    assert first.status_code == 202
    PushedDocument.objects.all().delete()  # so a replay that got through would show
    replay = deliver(push_source, body=body, timestamp=ts)
    assert replay.status_code == 401 and "received before" in replay.json()["detail"]
    assert refusals("replay").count() == 1
    assert not PushedDocument.objects.exists() and SyncRun.objects.count() == 1
    # re-signed with a fresh timestamp it is a new delivery
    assert deliver(push_source, body=body, timestamp=ts + 1).status_code == 202
    assert PushedDocument.objects.count() == 1


def test_remembered_signatures_are_pruned_once_they_cannot_be_replayed(push_source):
    assert deliver(push_source, {"events": [upsert("a")]}).status_code == 202
    old = WebhookDelivery.objects.get()
    WebhookDelivery.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(minutes=11))
    assert deliver(push_source, {"events": [upsert("b")]}).status_code == 202
    assert list(WebhookDelivery.objects.values_list("pk", flat=True)) != [old.pk]
    assert WebhookDelivery.objects.count() == 1 and not WebhookDelivery.objects.filter(pk=old.pk).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b'["upsert"]', "body"),
        (b"{}", "events"),
        (b'{"events": {"type": "upsert"}}', "events"),
        (b'{"events": [], "extra": 1}', "extra"),
        (b'{"events": [], "delivery_id": 5}', "delivery_id"),
        (b'{"events": ["x"]}', "events[0]"),
        (b'{"events": [{"type": "update", "id": "a", "content": "x"}]}', "events[0].type"),
        (b'{"events": [{"type": "upsert", "content": "x"}]}', "events[0].id"),
        (b'{"events": [{"type": "upsert", "id": 7, "content": "x"}]}', "events[0].id"),
        (b'{"events": [{"type": "delete", "id": "a"}, {"type": "upsert", "id": "b"}]}', "events[1].content"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "  "}]}', "events[0].content"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "x", "content_type": "application/pdf"}]}',
         "events[0].content_type"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "x", "groups": "hr"}]}', "events[0].groups"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "x", "groups": []}]}', "events[0].groups"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "x", "uri": "javascript:alert(1)"}]}',
         "events[0].uri"),
        (b'{"events": [{"type": "upsert", "id": "a", "content": "x", "contents": "y"}]}', "events[0].contents"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_field(push_source, body, field):
    response = deliver(push_source, body=body)  # correctly signed
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(f"{field}: "), response.json()
    assert refusals("malformed").count() == 1
    assert nothing_stored() and not WebhookDelivery.objects.exists()


def test_too_many_events_in_one_delivery(push_source, settings):
    settings.WEBHOOK_MAX_EVENTS = 3
    response = deliver(push_source, {"events": [upsert(f"d{i}") for i in range(4)]})
    assert response.status_code == 400 and response.json()["detail"].startswith("events: at most 3")
    assert nothing_stored()


def test_a_delete_event_prunes_the_document(push_source, bob):
    created = deliver(push_source, {"events": [upsert("crane-7"), upsert("gate", "The north gate opens at six.")]})
    assert run_now(created).items_new == 2
    assert search(bob, "harbour crane hydraulic hoses")[0]["document_title"] == "Crane 7"

    deleted = deliver(push_source, {"events": [{"type": "delete", "id": "crane-7"}]})
    assert deleted.status_code == 202 and deleted.json()["accepted"] == 1
    run = run_now(deleted)
    assert run.items_deleted == 1 and run.status == "succeeded"
    assert list(Document.objects.values_list("external_id", flat=True)) == ["gate"]
    assert not any("crane" in r["text"].lower() for r in search(bob, "harbour crane hydraulic hoses", top_k=10))
    # deleting what is not there is accepted and does nothing; the same body in the same second is told apart from
    # a replay by the sender's delivery_id
    again = deliver(push_source, {"events": [{"type": "delete", "id": "crane-7"}], "delivery_id": "retry-2"})
    assert again.status_code == 202 and run_now(again).items_deleted == 0


def test_a_group_restricted_push_is_invisible_outside_the_group(push_source, alice, bob):
    response = deliver(push_source, {"events": [
        upsert("salaries", "Salary bands for the harbour engineers are reviewed every April.", groups=["hr"]),
    ]})
    assert run_now(response).items_new == 1
    assert set(DocumentAccess.objects.values_list("principal", flat=True)) == {"group:hr"}
    assert any("Salary bands" in r["text"] for r in search(alice, "salary bands harbour engineers"))
    assert search(bob, "salary bands harbour engineers") == []
    doc = Document.objects.get()
    assert token_client(bob).get(f"/api/v1/documents/{doc.pk}/").status_code == 404

    # readers follow a later push: opened to the source's readers (everyone signed in) when groups are left out
    run = run_now(deliver(push_source, {"events": [
        upsert("salaries", "Salary bands for the harbour engineers are reviewed every April.")]}))
    assert run.items_updated == 1 and any("Salary bands" in r["text"] for r in search(bob, "salary bands"))


def test_webhook_on_a_filesystem_source_requests_a_sync(power, corpus_dir, django_capture_on_commit_callbacks):
    client = token_client(power)
    created = client.post("/api/v1/sources/", {"name": "share", "kind": "filesystem",
                                               "config": {"path": str(corpus_dir), "webhook_secret": SECRET}},
                          format="json")
    assert created.status_code == 201, created.content
    assert created.json()["config"]["webhook_secret"] == MASK and SECRET not in created.content.decode()
    source = Source.objects.get(pk=created.json()["id"])
    assert is_secret(source.config["webhook_secret"]) and SECRET not in json.dumps(source.config)

    with django_capture_on_commit_callbacks() as callbacks:
        response = deliver(source, {"events": [{"type": "upsert", "id": "it/vpn.md"}]})
    assert response.status_code == 202, response.content
    run = SyncRun.objects.get(pk=response.json()["sync_run_id"])
    assert run.status == "pending" and run.trigger == "webhook" and len(callbacks) == 1
    assert not PushedDocument.objects.exists()  # a file share's content is fetched by the sync, not pushed
    joined = deliver(source, {"events": [{"type": "delete", "id": "old.txt"}]})
    assert joined.json() == {"accepted": 1, "sync_run_id": run.pk}

    # the connector never sees the webhook secret, and syncs as before
    done = sync.run_sync(run.pk)
    done.refresh_from_db()
    assert done.status == "succeeded" and done.items_new == Document.objects.count() == 4

    # the mask sent back keeps the stored secret, which still signs
    kept = client.patch(f"/api/v1/sources/{source.pk}/", {"config": created.json()["config"]}, format="json")
    assert kept.status_code == 200, kept.content
    source.refresh_from_db()
    assert decrypt_config(source.config)["webhook_secret"] == SECRET
    assert deliver(source, {"events": [{"type": "upsert", "id": "x"}]}).status_code == 202


@pytest.mark.parametrize(
    ("kind", "config", "field"),
    [
        ("push", {"webhook_secret": "short"}, "config.webhook_secret"),
        ("push", {"webhook_secret": 12345678901234567890}, "config.webhook_secret"),
        ("push", {"webhook_secret": SECRET, "path": "/tmp"}, "config.path"),
        ("filesystem", {"path": "/tmp", "webhook_secret": "short"}, "config.webhook_secret"),
    ],
)
def test_webhook_secret_is_validated(power, kind, config, field):
    response = token_client(power).post("/api/v1/sources/", {"name": "x", "kind": kind, "config": config},
                                        format="json")
    assert response.status_code == 400 and response.json()["detail"].startswith(field), response.content
    assert not Source.objects.exists()


def test_a_source_without_a_secret_accepts_no_webhooks(roles, corpus_dir):
    source = create_source(name="quiet", config={"path": str(corpus_dir)})
    response = deliver(source, {"events": [{"type": "upsert", "id": "a"}]})
    assert response.status_code == 403 and "no webhook_secret" in response.json()["detail"]
    assert refusals("no_secret").count() == 1 and not SyncRun.objects.exists()


def test_unknown_and_disabled_sources(push_source):
    missing = APIClient().post("/api/v1/sources/999999/webhook/", data=b"{}", content_type="application/json")
    assert missing.status_code == 404
    Source.objects.filter(pk=push_source.pk).update(enabled=False)
    push_source.refresh_from_db()
    response = deliver(push_source, {"events": [upsert("a")]})
    assert response.status_code == 409 and "disabled" in response.json()["detail"]
    assert refusals("disabled").count() == 1 and nothing_stored()


def test_an_empty_delivery_is_a_connectivity_check(push_source):
    response = deliver(push_source, {"events": []})
    assert response.status_code == 202 and response.json() == {"accepted": 0}
    assert not SyncRun.objects.exists()


def test_a_push_arriving_while_a_run_is_listing_gets_a_follow_up_run(push_source, bob, monkeypatch):
    """The run has already listed the source when the second push arrives: joining it alone would leave the new
    document unindexed until some later push. The run is marked, and when it ends another run picks it up."""
    first = deliver(push_source, {"events": [upsert("crane-7")]})
    run_id = first.json()["sync_run_id"]
    original = sync._SyncJob._process
    pushed_meanwhile = []

    def process_then_push(job, raw, known_hash):
        original(job, raw, known_hash)
        if not pushed_meanwhile:
            late = deliver(push_source, {"events": [upsert("gate", "The north gate opens at six.")]})
            pushed_meanwhile.append(late.json())

    monkeypatch.setattr(sync._SyncJob, "_process", process_then_push)
    run = sync.run_sync(run_id)
    run.refresh_from_db()
    assert pushed_meanwhile == [{"accepted": 1, "sync_run_id": run_id}]  # it joined the running run
    assert run.status == "succeeded" and run.follow_up and run.items_seen == 1
    assert not Document.objects.filter(external_id="gate").exists()
    follow = SyncRun.objects.get(status="pending")
    assert follow.trigger == "follow-up"
    monkeypatch.setattr(sync._SyncJob, "_process", original)
    done = sync.run_sync(follow.pk)
    done.refresh_from_db()
    assert done.items_seen == 1 and done.items_new == 1  # incremental: only what came after the checkpoint
    assert any("north gate" in r["text"] for r in search(bob, "when does the north gate open"))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_push_is_indexed_by_the_real_worker(worker, roles, bob):
    """Through the broker: the webhook's run is enqueued on commit and a real worker indexes the pushed text."""
    source = create_source(name="kb", kind="push", config={"webhook_secret": SECRET})
    response = deliver(source, {"events": [upsert("crane-7", title="Crane maintenance")]})
    assert response.status_code == 202, response.content
    run = SyncRun.objects.get(pk=response.json()["sync_run_id"])
    deadline = time.monotonic() + 60
    while run.status in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        run.refresh_from_db()
    assert run.status == "succeeded" and run.items_new == 1, (run.status, run.message, run.errors)
    deadline = time.monotonic() + 10
    while not (results := search(bob, "When is the harbour crane serviced?")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert results and results[0]["document_title"] == "Crane maintenance"


def test_a_body_over_the_upload_limit_is_refused_with_a_message(push_source, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = deliver(push_source, {"events": [upsert("big", "word " * 5000)]})
    assert response.status_code == 413 and response.json()["detail"].startswith("body: over the 10,000-byte limit")
    assert nothing_stored()
