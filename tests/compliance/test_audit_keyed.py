"""The keyed audit chain and its signed checkpoints (issue 12 item 8): someone who holds only the database can
edit rows and recompute every later hash, but not the HMAC key nor the Ed25519 key that signs tree heads kept
outside the database, so verify_audit (with the key, and with --checkpoints) names the rewrite."""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.compliance import audit
from apps.compliance.audit import verify_chain
from apps.compliance.models import AuditEvent
from tests.compliance.test_audit_chain import _events, _raw

pytestmark = pytest.mark.django_db


@pytest.fixture
def checkpoint_dir(settings, tmp_path):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "checkpoints"
    settings.AUDIT_CHECKPOINT_URL = ""
    return settings.AUDIT_CHECKPOINT_DIR


def _attacker_rewrite(from_seq, new_data, *, downgrade=False):
    """What someone with only the database does: edit a row, then recompute every later hash with the code's own
    canonical form and plain SHA-256 (the key is not in the database), re-link the chain and move the head.
    With ``downgrade`` the rewritten rows also claim the unkeyed scheme that older rows legitimately use."""
    prev = AuditEvent.objects.get(seq=from_seq - 1).hash if from_seq > 1 else audit.GENESIS_HASH
    for event in AuditEvent.objects.filter(seq__gte=from_seq).order_by("seq"):
        if event.seq == from_seq:
            event.data = new_data
        event.prev_hash = prev
        if downgrade:
            event.scheme = "sha256"
        digest = hashlib.sha256(audit._canonical(event)).hexdigest()
        sets = "data = %s, prev_hash = %s, hash = %s" + (", scheme = 'sha256'" if downgrade else "")
        _raw(f"UPDATE compliance_auditevent SET {sets} WHERE seq = %s",  # noqa: S608 (test's own text)
             [json.dumps(event.data), prev, digest, event.seq])
        prev = digest
    _raw("UPDATE compliance_audithead SET hash = %s WHERE id = 1", [prev])


def _rfc9162_root(leaves):
    """RFC 9162 section 2.1.1, written out recursively as the RFC states it (the reference for the test)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _rfc9162_root(leaves[:k]) + _rfc9162_root(leaves[k:])).digest()


def test_merkle_root_is_rfc9162():
    from apps.compliance.checkpoints import MerkleTree

    for n in range(0, 40):
        leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
        tree = MerkleTree()
        for leaf in leaves:
            tree.add(leaf)
        assert tree.root() == _rfc9162_root(leaves), n


def test_new_rows_are_keyed_and_a_legitimate_chain_passes(checkpoint_dir, capsys):
    events = _events(4)
    assert {e.scheme for e in events} == {"hmac-sha256"}
    assert events[0].hash != hashlib.sha256(audit._canonical(events[0])).hexdigest()  # not a plain hash
    call_command("audit_checkpoint")
    _events(2)  # rows after the checkpoint are fine too
    call_command("verify_audit", "--checkpoints", str(checkpoint_dir))
    out = capsys.readouterr().out
    assert "audit chain intact: 6 events verified" in out and "HMAC-SHA256" in out and "1 checkpoint" in out


def test_rewrite_with_recomputed_hashes_is_detected_by_the_key():
    _events(5)
    _attacker_rewrite(3, {"i": 99})
    assert AuditEvent.objects.get(seq=3).data == {"i": 99}  # the tampering really happened
    report = verify_chain()
    assert not report.ok and report.broken_seq == 3
    with pytest.raises(CommandError, match="seq 3"):
        call_command("verify_audit")


def test_a_wrong_key_is_named_not_silently_accepted(settings):
    _events(2)
    settings.AUDIT_HMAC_KEY = "not the key the rows were written with"
    report = verify_chain()
    assert not report.ok and report.broken_seq == 1 and "AUDIT_HMAC_KEY" in report.reason


def test_downgrading_later_rows_to_the_unkeyed_scheme_is_named():
    _events(5)
    _attacker_rewrite(3, {"i": 99}, downgrade=True)
    report = verify_chain()
    assert not report.ok and report.broken_seq == 3 and "unkeyed" in report.reason


def test_legacy_unkeyed_rows_still_verify_and_are_reported(capsys):
    """Rows written before the keyed chain (scheme sha256, set by the migration on existing rows) verify under the
    old rule; the keyed chain continues from them and verify_audit says where it starts."""
    _events(3)
    _attacker_rewrite(1, {"i": 0}, downgrade=True)  # the same bytes the old code wrote: a legacy prefix
    _events(2)
    report = verify_chain()
    assert report.ok and report.checked == 5 and report.unkeyed_until == 3
    call_command("verify_audit")
    out = capsys.readouterr().out
    assert "seq 1..3 unkeyed" in out and "seq 4..5 HMAC-SHA256" in out


def test_checkpoint_detects_a_whole_chain_rewrite_by_a_database_only_attacker(checkpoint_dir):
    """The strongest database-only attack: rewrite every row as an unkeyed legacy chain (which the key cannot
    tell from a real legacy prefix). The signed tree head outside the database still tells."""
    _events(5)
    call_command("audit_checkpoint")
    _attacker_rewrite(1, {"i": 42}, downgrade=True)
    assert verify_chain().ok  # the chain alone is fooled...
    with pytest.raises(CommandError, match=r"seq 1\.\.5") as info:  # ...the checkpoint is not
        call_command("verify_audit", "--checkpoints", str(checkpoint_dir))
    assert "checkpoint" in str(info.value) and "\n" not in str(info.value)


def test_checkpoint_detects_truncation(checkpoint_dir):
    _events(5)
    call_command("audit_checkpoint")
    _raw("DELETE FROM compliance_auditevent WHERE seq >= 4")
    _raw("UPDATE compliance_audithead SET seq = 3, hash = %s WHERE id = 1", [AuditEvent.objects.get(seq=3).hash])
    assert verify_chain().ok  # head moved too: the chain alone cannot tell
    with pytest.raises(CommandError, match="truncat"):
        call_command("verify_audit", "--checkpoints", str(checkpoint_dir))


def test_tampered_checkpoint_fails_its_signature(checkpoint_dir):
    _events(3)
    call_command("audit_checkpoint")
    (path,) = checkpoint_dir.glob("*.json")
    doc = json.loads(path.read_text())
    doc["tree_size"] = 2  # a forger shrinks the head to hide rows 3.. being rewritten
    path.write_text(json.dumps(doc))
    with pytest.raises(CommandError, match="signature"):
        call_command("verify_audit", "--checkpoints", str(checkpoint_dir))
    doc["tree_size"] = 3
    doc["signature"] = base64.b64encode(b"\x00" * 64).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(CommandError, match="signature"):
        call_command("verify_audit", "--checkpoints", str(checkpoint_dir))


def test_verify_audit_with_an_empty_or_missing_checkpoint_dir_is_one_line(tmp_path):
    _events(1)
    with pytest.raises(CommandError, match="no checkpoints"):
        call_command("verify_audit", "--checkpoints", str(tmp_path))
    with pytest.raises(CommandError, match="no checkpoints"):
        call_command("verify_audit", "--checkpoints", str(tmp_path / "absent"))


def test_checkpoint_is_posted_to_the_sink_and_a_dead_sink_is_not_fatal(settings, checkpoint_dir, caplog):
    received = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _events(2)
        settings.AUDIT_CHECKPOINT_URL = f"http://127.0.0.1:{server.server_port}/checkpoints"
        call_command("audit_checkpoint")
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1 and received[0]["tree_size"] == 2
    assert received[0] == json.loads(next(checkpoint_dir.glob("*.json")).read_text())
    # The same port, now closed: the file is still written, the failure logged.
    call_command("audit_checkpoint")
    assert len(list(checkpoint_dir.glob("*.json"))) == 2
    assert any("checkpoint sink" in r.getMessage() for r in caplog.records)


def test_a_broken_chain_is_not_signed(checkpoint_dir):
    _events(3)
    _raw("UPDATE compliance_auditevent SET data = %s WHERE seq = 2", ['{"i": 7}'])
    with pytest.raises(CommandError, match="seq 2"):
        call_command("audit_checkpoint")
    assert not list(checkpoint_dir.glob("*.json")) if checkpoint_dir.exists() else True


def test_checkpoint_task_is_scheduled_and_registered(settings, checkpoint_dir):
    from ragsite.celery import app

    schedule = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert schedule["maintenance.audit_checkpoint"] == settings.AUDIT_CHECKPOINT_SECONDS
    app.loader.import_default_modules()
    task = app.tasks["maintenance.audit_checkpoint"]
    _events(2)
    task()  # the task body: one service call
    assert len(list(checkpoint_dir.glob("*.json"))) == 1
