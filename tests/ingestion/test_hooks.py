"""Ingestion tells the layers above it what it wrote through hooks they connect in AppConfig.ready() (issue 9): the
retrieval app's outbox receiver runs inside the writer's transaction, and a change with nobody listening is an
error, never silently lost."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from apps.ingestion import hooks
from apps.retrieval import outbox
from apps.retrieval.models import IndexChange

pytestmark = pytest.mark.django_db


def test_a_change_reaches_the_outbox_in_the_writers_transaction():
    document_id = "5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42"
    with pytest.raises(RuntimeError), transaction.atomic():
        hooks.announce_changes([document_id])
        assert IndexChange.objects.filter(document_id=document_id).exists()
        raise RuntimeError("the writer's transaction fails")
    assert not IndexChange.objects.filter(document_id=document_id).exists()  # rolled back with it
    hooks.announce_changes([document_id])
    assert IndexChange.objects.filter(document_id=document_id).count() == 1


def test_a_change_with_no_receiver_is_an_error():
    assert hooks.documents_changed.disconnect(dispatch_uid="retrieval.outbox")
    try:
        with pytest.raises(ImproperlyConfigured, match="documents_changed"):
            hooks.announce_changes(["5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42"])
    finally:
        hooks.documents_changed.connect(outbox.on_documents_changed, dispatch_uid="retrieval.outbox")
    assert not IndexChange.objects.exists()


def test_the_outbox_position_comes_from_the_retrieval_app(monkeypatch):
    hooks.announce_changes(["5b0d3c1e-6f0e-4a53-9d7b-6a2b9c1f7e42"])
    assert hooks.outbox_position() == outbox.outbox_head() == IndexChange.objects.latest("id").id
    monkeypatch.setattr(hooks, "_outbox_position", None)
    with pytest.raises(ImproperlyConfigured, match="outbox position"):
        hooks.outbox_position()
