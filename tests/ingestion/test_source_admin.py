"""The source admin writes through the same services as the API (issue 9: one path for admin and API writes), so
what the services check and record holds in the admin too: the folder-overlap rule of issue 12 item 4, the audit,
the schedule."""

import json

import pytest
from django.contrib.auth.models import Group, Permission
from django_celery_beat.models import PeriodicTask

from apps.compliance.models import AuditEvent
from apps.ingestion.models import Source
from apps.ingestion.sources import create_source
from tests.conftest import admin_form_data
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def add_form(name: str, path, groups=()) -> dict:
    return {"name": name, "kind": "filesystem", "config": json.dumps({"path": str(path)}), "schedule": "",
            "reader_groups": [g.pk for g in groups], "enabled": "on",
            **{f"{prefix}-{key}": value for prefix in ("user_grants", "group_grants")
               for key, value in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0), ("MIN_NUM_FORMS", 0),
                                  ("MAX_NUM_FORMS", 1000))}}


def form_errors(response) -> str:
    context = response.context or {}
    errors = [context["adminform"].form.errors] if "adminform" in context else []
    errors += [f.errors for formset in context.get("inline_admin_formsets", []) for f in formset.formset.forms]
    errors += [formset.formset.non_form_errors() for formset in context.get("inline_admin_formsets", [])]
    return str(errors)


def test_admin_creates_a_source_through_the_service(admin_user, roles, corpus_dir, client):
    client.force_login(admin_user)
    hr = Group.objects.get(name="hr")
    response = client.post("/admin/ingestion/source/add/", add_form("hr-handbook", corpus_dir / "hr", [hr]))
    assert response.status_code == 302, form_errors(response)
    source = Source.objects.get()
    assert source.name == "hr-handbook"
    assert list(source.reader_groups.values_list("name", flat=True)) == ["hr"]
    event = AuditEvent.objects.filter(action="source.create").get()
    assert event.actor_name == admin_user.username and event.data["groups"] == ["hr"]


def test_admin_change_is_the_services_update(admin_user, indexed_source, client):
    client.force_login(admin_user)
    url = f"/admin/ingestion/source/{indexed_source.pk}/change/"
    form = admin_form_data(client, url)
    form["schedule"] = "15 4 * * *"
    response = client.post(url, form)
    assert response.status_code == 302, form_errors(response)
    event = AuditEvent.objects.filter(action="source.update").get()
    assert event.actor_name == admin_user.username and "schedule" in event.data["changed"]
    assert PeriodicTask.objects.get(name=f"sync source {indexed_source.pk}").crontab.hour == "4"


def test_admin_holds_a_staff_source_manager_to_the_overlap_rule(roles, corpus_dir, client):
    """A staff user who may add sources in the admin but lacks administer_sources may not copy a restricted
    folder there either (the API refused it already; the admin form bypassed the service)."""
    hr = Group.objects.get(name="hr")
    create_source(name="hr-only", config={"path": str(corpus_dir / "hr")}, groups=["hr"])
    sam = UserFactory(username="sam", groups=["power_user"], is_staff=True)
    sam.user_permissions.add(*Permission.objects.filter(content_type__app_label="ingestion",
                                                        codename__in=["add_source", "change_source", "view_source"]))
    client.force_login(sam)
    response = client.post("/admin/ingestion/source/add/", add_form("copy", corpus_dir / "hr", [hr]))
    assert response.status_code == 200, response.status_code
    assert "overlaps the folder of another source" in form_errors(response)
    assert not Source.objects.filter(name="copy").exists()
