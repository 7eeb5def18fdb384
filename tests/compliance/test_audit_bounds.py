"""Audit rows are bounded and honest about who acted (issue 12 item 7): an oversized value is stored as its
SHA-256 digest and size, and a name that nobody proved is stored as a claim, never as the actor."""

import hashlib
import json

import pytest

from apps.compliance.audit import record, verify_chain
from apps.compliance.models import AuditEvent
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_an_oversized_value_is_replaced_by_its_digest(settings):
    settings.AUDIT_MAX_DATA_BYTES = 4096
    big = {"source": list(range(240_000))}
    event = record("search", data={"query_hmac": "ab" * 32, "filters": big, "chunk_ids": ["c1", "c2"]})
    stored = AuditEvent.objects.get(pk=event.pk).data
    assert stored["query_hmac"] == "ab" * 32 and stored["chunk_ids"] == ["c1", "c2"]  # small values kept
    raw = _canonical(big)
    assert stored["filters"] == {"omitted": "over AUDIT_MAX_DATA_BYTES", "sha256": hashlib.sha256(raw).hexdigest(),
                                 "bytes": len(raw)}
    assert len(json.dumps(stored)) <= 4096
    assert verify_chain().ok


def test_many_small_values_over_the_bound_are_digested_whole(settings):
    settings.AUDIT_MAX_DATA_BYTES = 512
    data = {f"k{i}": "x" * 40 for i in range(100)}
    stored = AuditEvent.objects.get(pk=record("test.many", data=data).pk).data
    assert len(json.dumps(stored)) <= 512
    assert stored["omitted"] == "over AUDIT_MAX_DATA_BYTES" and stored["bytes"] == len(_canonical(data))


def test_search_with_a_huge_filter_writes_a_small_row(indexed_source, bob, settings):
    settings.AUDIT_MAX_DATA_BYTES = 4096
    ids = list(range(1, 240_001))
    response = token_client(bob).post("/api/v1/search/", {"query": "VPN", "filters": {"source": ids}},
                                      format="json")
    assert response.status_code in (200, 400)  # whatever search answers, its audit row (if any) is bounded
    for event in AuditEvent.objects.filter(action="search"):
        assert len(json.dumps(event.data)) <= 4096
    if response.status_code == 200:
        event = AuditEvent.objects.filter(action="search").latest("seq")
        assert event.data["filters"]["sha256"] == hashlib.sha256(_canonical({"source": ids})).hexdigest()


def test_a_failed_sign_in_stores_the_username_as_a_claim(client, django_user_model):
    django_user_model.objects.create_user("dora", password="a long enough password 1")
    assert not client.login(username="admin", password="wrong")
    event = AuditEvent.objects.filter(action="auth.login_failed").latest("seq")
    assert event.actor_name == "" and event.actor_id is None
    assert event.data["claimed_actor"] == "admin"


def test_a_claim_is_cut_to_size():
    event = record("auth.login_failed", claimed_actor="x" * 10_000)
    assert event.actor_name == "" and len(event.data["claimed_actor"]) == 150
