import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.compliance.models import AuditEvent
from apps.ingestion.models import Source, SyncRun
from tests.conftest import token_client
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def power(roles):
    # In hr: the API shows a source only to its readers (issue 12 item 1), and pat creates hr sources below.
    return UserFactory(username="pat", groups=["power_user", "hr"])


def test_create_source_through_the_api(power, corpus_dir, django_capture_on_commit_callbacks):
    client = token_client(power)
    response = client.post("/api/v1/sources/", {"name": "Team Docs", "kind": "filesystem",
                                                "config": {"path": str(corpus_dir)}, "groups": ["hr"]},
                           format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "team-docs" and body["groups"] == ["hr"]
    assert AuditEvent.objects.filter(action="source.create", object_id=str(body["id"])).exists()
    with django_capture_on_commit_callbacks() as callbacks:
        sync = client.post(f"/api/v1/sources/{body['id']}/sync/", {}, format="json")
    assert sync.status_code == 202
    run = SyncRun.objects.get(pk=sync.json()["sync_run_id"])
    assert run.status == "pending" and run.trigger == "api"
    assert len(callbacks) == 1  # the task is enqueued only once the row is committed
    detail = client.get(f"/api/v1/sync-runs/{run.pk}/").json()
    assert detail["status"] == "pending" and detail["counts"]["seen"] == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "kind": "filesystem", "config": {}}, "config.path"),
        ({"name": "x", "kind": "ftp", "config": {"path": "/tmp"}}, "kind"),
        ({"name": "x", "kind": "filesystem", "config": {"path": "/tmp", "depth": 3}}, "config.depth"),
        ({"name": "x", "kind": "filesystem", "config": {"path": "/tmp"}, "schedule": "every day"}, "schedule"),
        ({"name": "x", "kind": "filesystem", "config": {"path": "/tmp"}, "groups": ["nobody"]}, "groups"),
    ],
)
def test_bad_source_config_names_the_field(power, payload, field):
    response = token_client(power).post("/api/v1/sources/", payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["detail"].startswith(field)
    assert not Source.objects.exists()


def test_schedule_becomes_a_periodic_task(power, corpus_dir):
    from django_celery_beat.models import PeriodicTask

    response = token_client(power).post("/api/v1/sources/", {"name": "nightly", "config": {"path": str(corpus_dir)},
                                                             "schedule": "30 2 * * *"}, format="json")
    assert response.status_code == 201
    task = PeriodicTask.objects.get(name=f"sync source {response.json()['id']}")
    assert task.task == "ingestion.scheduled_sync" and task.crontab.hour == "2" and task.crontab.minute == "30"


def test_readonly_role_cannot_manage_sources(roles, corpus_dir):
    viewer = UserFactory(username="vera", groups=["readonly"])
    client = token_client(viewer)
    assert client.get("/api/v1/sources/").status_code == 200
    response = client.post("/api/v1/sources/", {"name": "x", "config": {"path": str(corpus_dir)}}, format="json")
    assert response.status_code == 403 and "manage_sources" in response.json()["detail"]


def test_documents_list_and_read_respect_access(indexed_source, alice, bob):
    bob_docs = token_client(bob).get("/api/v1/documents/").json()
    titles = {d["title"] for d in bob_docs["results"]}
    assert "Parental leave" not in titles and "Connecting to the VPN" in titles
    hr_doc = next(d for d in token_client(alice).get("/api/v1/documents/").json()["results"]
                  if d["title"] == "Parental leave")
    forbidden = token_client(bob).get(f"/api/v1/documents/{hr_doc['id']}/")
    missing = token_client(bob).get("/api/v1/documents/00000000-0000-0000-0000-000000000000/")
    assert forbidden.status_code == missing.status_code == 404
    assert forbidden.json() == missing.json()
    allowed = token_client(alice).get(f"/api/v1/documents/{hr_doc['id']}/")
    assert allowed.status_code == 200 and "twenty-six weeks" in allowed.json()["chunks"][0]["text"]
    assert AuditEvent.objects.filter(action="document.read", object_id=hr_doc["id"]).count() == 1


def test_add_source_command(corpus_dir, roles):
    call_command("add_source", "cli-docs", "--type", "filesystem", "--path", str(corpus_dir), "--group", "hr")
    source = Source.objects.get(name="cli-docs")
    assert list(source.reader_groups.values_list("name", flat=True)) == ["hr"]
    with pytest.raises(CommandError, match="already exists"):
        call_command("add_source", "cli-docs", "--path", str(corpus_dir))
    with pytest.raises(CommandError, match="config.path: a directory path is required"):
        call_command("add_source", "other")
    # Inside the allowed roots (FILESYSTEM_SOURCE_ROOTS): a path outside them is refused before it is looked at.
    missing = corpus_dir.parent.resolve() / "nowhere" / "at" / "all"
    with pytest.raises(CommandError, match=f"config: source path {missing} does not exist"):
        call_command("add_source", "other", "--path", str(missing))
    with pytest.raises(CommandError, match="config.path: must be inside an allowed folder"):
        call_command("add_source", "other", "--path", "/nowhere/at/all")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("add_source", "other", "--config", "{nope")


def test_sync_source_command_errors(roles):
    with pytest.raises(CommandError, match="no source named 'ghost'"):
        call_command("sync_source", "ghost")
