"""Change events from a Redis stream (the real Redis on the broker's URL), read through a consumer group by the
same service the webhook uses: handled, acknowledged only once applied, and reclaimed from a dead consumer."""

import json
import os
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.core.management import call_command

from apps.compliance.models import AuditEvent
from apps.ingestion import change_stream, sync
from apps.ingestion.change_stream import ChangeStreamConsumer
from apps.ingestion.models import Document, PushedDocument, SyncRun
from apps.ingestion.sources import create_source
from tests.conftest import token_client

pytestmark = pytest.mark.django_db

GROUP = "ragsite"


@pytest.fixture
def client():
    connection = redis.Redis.from_url(settings.CELERY_BROKER_URL, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def stream(client):
    name = f"ragsite-test-changes-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(name, f"{name}.dead")


@pytest.fixture
def push_source(roles):
    return create_source(name="kb", kind="push")


def consumer(client, stream, name="alive", **kwargs):
    return ChangeStreamConsumer(client, stream, GROUP, name, block_ms=50, **kwargs)


def pending(client, stream) -> int:
    return client.xpending(stream, GROUP)["pending"]


def test_events_are_applied_and_acknowledged(client, stream, push_source, corpus_dir, bob):
    share = create_source(name="share", config={"path": str(corpus_dir)})
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "crane-7", "title": "Crane maintenance",
                         "content": "Harbour crane 7 is serviced every second Tuesday by the night shift."})
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "salaries", "groups": json.dumps(["hr"]),
                         "content": "Salary bands for harbour engineers are reviewed every April."})
    client.xadd(stream, {"source": "share", "type": "upsert", "id": "it/vpn.md"})
    client.xadd(stream, {"source": "kb", "type": "delete", "id": "never-pushed"})

    stats = consumer(client, stream).run(iterations=1)
    assert stats.handled == 4 and stats.dead_lettered == 0 and stats.failed == 0
    assert pending(client, stream) == 0  # every message acknowledged
    assert client.xinfo_groups(stream)[0]["last-delivered-id"] == client.xinfo_stream(stream)["last-generated-id"]

    rows = {p.external_id: p for p in PushedDocument.objects.filter(source=push_source)}
    assert set(rows) == {"crane-7", "salaries"} and rows["salaries"].groups == ["hr"]
    kb_run = SyncRun.objects.get(source=push_source)
    share_run = SyncRun.objects.get(source=share)
    assert kb_run.trigger == share_run.trigger == "stream" and stats.sync_runs == {kb_run.pk, share_run.pk}
    received = AuditEvent.objects.filter(action="changes.received", actor_name=f"stream:{stream}")
    assert sorted((e.data["upserts"], e.data["deletes"]) for e in received) == [(1, 0), (2, 1)]

    sync.run_sync(kb_run.pk)
    assert Document.objects.filter(source=push_source).count() == 2
    found = token_client(bob).post("/api/v1/search/", {"query": "when is the harbour crane serviced"},
                                   format="json").json()["results"]
    assert found and found[0]["document_title"] == "Crane maintenance"
    assert not any("Salary" in r["text"] for r in found)  # bob is not in hr

    # nothing new: the next read handles nothing and leaves nothing pending
    again = consumer(client, stream).run(iterations=1)
    assert again.handled == 0 and pending(client, stream) == 0


def test_unusable_messages_go_to_the_dead_letter_stream(client, stream, push_source):
    client.xadd(stream, {"source": "nowhere", "type": "upsert", "id": "a", "content": "x"})
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "b"})  # no content
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "c", "content": "fine", "groups": "hr"})
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "d", "content": "The good one."})

    stats = consumer(client, stream).run(iterations=1)
    assert stats.handled == 1 and stats.dead_lettered == 3 and pending(client, stream) == 0
    dead = [fields for _id, fields in client.xrange(f"{stream}.dead")]
    assert [d["error"].split(":")[0] for d in dead] == ["source", "message.content", "groups"]
    assert dead[0]["source"] == "nowhere" and dead[1]["id"] == "b"
    assert list(PushedDocument.objects.values_list("external_id", flat=True)) == ["d"]
    assert AuditEvent.objects.filter(action="changes.refused", object_id=stream).count() == 3


def test_a_message_is_acknowledged_only_after_it_was_applied(client, stream, push_source, monkeypatch):
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "a", "content": "Applied later."})

    def database_down(*args, **kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(change_stream, "apply_events", database_down)
    stats = consumer(client, stream).run(iterations=1)
    assert stats.failed == 1 and stats.handled == 0
    assert pending(client, stream) == 1 and not PushedDocument.objects.exists()

    monkeypatch.undo()
    time.sleep(0.15)
    retried = consumer(client, stream, claim_idle_ms=100).run(iterations=1)
    assert retried.handled == 1 and pending(client, stream) == 0
    assert PushedDocument.objects.get().content == "Applied later."


def test_a_message_left_pending_by_a_dead_consumer_is_reclaimed(client, stream, push_source):
    reader = consumer(client, stream, claim_idle_ms=100)
    reader.ensure_group()
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "orphan", "content": "Left behind by a crash."})
    # a consumer reads it and dies before acknowledging
    taken = client.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=10)
    assert len(taken[0][1]) == 1
    owner = client.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert [p["consumer"] for p in owner] == ["dead-worker"]

    # not idle long enough yet: another consumer leaves it alone
    patient = consumer(client, stream, "patient", claim_idle_ms=60_000).run(iterations=1)
    assert patient.reclaimed == 0 and pending(client, stream) == 1 and not PushedDocument.objects.exists()

    time.sleep(0.15)
    stats = reader.run(iterations=1)
    assert stats.reclaimed == 1 and stats.handled == 1
    assert pending(client, stream) == 0
    assert PushedDocument.objects.get().external_id == "orphan"


def test_a_message_that_keeps_failing_is_dead_lettered(client, stream, push_source, monkeypatch):
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "a", "content": "Poison."})
    monkeypatch.setattr(change_stream, "apply_events", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    reader = consumer(client, stream, claim_idle_ms=1, max_deliveries=2)
    reader.run(iterations=1)  # delivered once, fails
    for _ in range(3):
        time.sleep(0.01)
        reader.run(iterations=1)  # reclaimed: second delivery fails, third is over the limit
    assert pending(client, stream) == 0 and reader.stats.dead_lettered == 1
    [(_id, dead)] = client.xrange(f"{stream}.dead")
    assert dead["error"] == "not handled after 2 deliveries" and dead["id"] == "a"


def test_consume_changes_command(client, stream, push_source, capsys):
    client.xadd(stream, {"source": "kb", "type": "upsert", "id": "cli", "content": "From the command."})
    call_command("consume_changes", "--stream", stream, "--block-ms", "50", "--max-iterations", "1")
    out = capsys.readouterr().out
    assert f"consuming '{stream}'" in out and "handled 1" in out
    assert pending(client, stream) == 0 and PushedDocument.objects.get().external_id == "cli"
