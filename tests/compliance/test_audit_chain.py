import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from apps.compliance.audit import GENESIS_HASH, record, verify_chain
from apps.compliance.models import AuditEvent

pytestmark = pytest.mark.django_db

postgres_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the append-only trigger exists on PostgreSQL only"
)


def _events(n=5):
    return [record("test.event", actor="tester", object_type="thing", object_id=i, data={"i": i}) for i in range(n)]


def _raw(sql, params=()):
    """Tamper with the table the way someone with database access would, bypassing the ORM guards."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE compliance_auditevent DISABLE TRIGGER compliance_auditevent_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE compliance_auditevent ENABLE TRIGGER compliance_auditevent_append_only")


def test_events_link_into_a_chain():
    events = _events(3)
    assert events[0].prev_hash == GENESIS_HASH
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    report = verify_chain()
    assert report.ok and report.checked == 3
    call_command("verify_audit")


def test_an_event_reads_back_as_it_was_written(django_user_model):
    """record() writes the row with its own INSERT (apps.compliance.audit._insert): every field must come back
    from the database as written, or verification would fail on it later."""
    user = django_user_model.objects.create_user("writer")
    data = {"query_hmac": "ab" * 32, "chunk_ids": ["x", "y"], "nested": {"n": 1.5, "none": None}, "text": "Zoë ✓"}
    event = record("search", actor=user, object_type="doc", object_id=42, ip="2001:db8::1", data=data)
    stored = AuditEvent.objects.get(pk=event.pk)
    for field in ("seq", "created_at", "actor_id", "actor_name", "action", "object_type", "object_id", "ip", "data",
                  "prev_hash", "hash"):
        assert getattr(stored, field) == getattr(event, field), field
    assert stored.actor_name == "writer" and stored.data == data and stored.object_id == "42"
    assert not event._state.adding
    assert verify_chain().ok


def test_edited_row_is_named():
    events = _events(5)
    _raw("UPDATE compliance_auditevent SET data = %s WHERE seq = 3", ['{"i": 99}'])
    assert AuditEvent.objects.get(seq=3).data == {"i": 99}  # the tampering really happened
    report = verify_chain()
    assert not report.ok and report.broken_seq == 3 and "edited" in report.reason
    with pytest.raises(CommandError, match="seq 3"):
        call_command("verify_audit")
    assert events  # the untouched rows still verify up to the break
    assert report.checked == 2


def test_deleted_middle_row_is_named():
    _events(5)
    _raw("DELETE FROM compliance_auditevent WHERE seq = 2")
    assert not AuditEvent.objects.filter(seq=2).exists()
    report = verify_chain()
    assert not report.ok and report.broken_seq == 3


def test_deleted_last_row_is_noticed_through_the_head():
    _events(4)
    _raw("DELETE FROM compliance_auditevent WHERE seq = 4")
    report = verify_chain()
    assert not report.ok and report.broken_seq == 4 and "removed" in report.reason


def test_row_inserted_out_of_order_is_named():
    events = _events(3)
    forged = events[1]
    _raw(
        "INSERT INTO compliance_auditevent (seq, created_at, actor_name, action, object_type, object_id, data, "
        "prev_hash, hash) VALUES (%s, %s, %s, %s, '', '', %s, %s, %s)",
        [10, forged.created_at, "mallory", "test.forged", "{}", forged.hash, "f" * 64],
    )
    report = verify_chain()
    assert not report.ok and report.broken_seq == 10


def test_orm_refuses_changes():
    event = _events(1)[0]
    event.action = "changed"
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        AuditEvent.objects.all().update(action="x")
    with pytest.raises(TypeError):
        AuditEvent.objects.all().delete()


@postgres_only
@pytest.mark.parametrize("sql", ["UPDATE compliance_auditevent SET action = 'x'", "DELETE FROM compliance_auditevent"])
def test_postgres_trigger_refuses_update_and_delete(sql):
    from django.db import DatabaseError, transaction

    _events(2)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert AuditEvent.objects.count() == 2
    assert verify_chain().ok


def test_sign_in_and_failed_sign_in_are_audited(client, django_user_model):
    django_user_model.objects.create_user("dora", password="a long enough password 1")
    assert client.login(username="dora", password="a long enough password 1")
    assert not client.login(username="dora", password="wrong")
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", "actor_name"))
    assert ("auth.login", "dora") in actions
    # A failed sign-in proves nobody: the typed name is kept as a claim, the actor left empty (issue 12 item 7).
    assert ("auth.login_failed", "") in actions
    assert AuditEvent.objects.get(action="auth.login_failed").data["claimed_actor"] == "dora"
    assert verify_chain().ok
