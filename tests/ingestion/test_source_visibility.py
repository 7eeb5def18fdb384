"""Issue 12 item 1: sources/ and sync-runs/ show a source, its path, readers, counts and failing files only to
callers who may read it (or hold administer_sources); everyone else gets the 404 of a missing source."""

import pytest

from apps.ingestion.sources import create_source
from tests.conftest import sync_now, token_client, write_corpus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

SECRET_FILE = "layoffs-2027-names.txt"


@pytest.fixture
def hr_source(roles, tmp_path, settings):
    # The secret file is over the size limit, so it fails and its name lands in the run's error list.
    settings.MAX_DOCUMENT_BYTES = 200
    root = write_corpus(tmp_path / "hr-share", {"handbook.txt": "Holidays are 30 days a year.",
                                                SECRET_FILE: "Names of people to be let go. " * 20})
    source = create_source(name="hr-share", config={"path": str(root)}, groups=["hr"])
    run = sync_now(source)
    assert run.status == "partial" and SECRET_FILE in str(run.errors)  # the name really is there to leak
    return source, run


@pytest.fixture
def personas(roles, alice, bob):
    return {
        "alice": alice,  # user, member of hr: may read the source
        "bob": bob,  # user, not in hr
        "power": UserFactory(username="pat", groups=["power_user"]),  # manage_sources, not in hr
        "viewer": UserFactory(username="vera", groups=["readonly"]),
        "admin": UserFactory(username="ada", groups=["admin"]),  # administer_sources, not a superuser
    }


def _shown(client, source, run) -> dict:
    listing = client.get("/api/v1/sources/")
    runs = client.get("/api/v1/sync-runs/")
    assert listing.status_code == runs.status_code == 200
    return {
        "listed": source.name in listing.content.decode(),
        "detail": client.get(f"/api/v1/sources/{source.pk}/").status_code,
        "run_listed": SECRET_FILE in runs.content.decode(),
        "run": client.get(f"/api/v1/sync-runs/{run.pk}/").status_code,
        "grants": client.get(f"/api/v1/sources/{source.pk}/grants/").status_code,
    }


@pytest.mark.parametrize("who", ["bob", "power", "viewer"])
def test_unreadable_source_and_its_runs_are_404(hr_source, personas, who):
    source, run = hr_source
    client = token_client(personas[who])
    shown = _shown(client, source, run)
    assert shown["listed"] is False and shown["run_listed"] is False
    assert shown["detail"] == shown["run"] == 404
    assert shown["grants"] in (403, 404)
    for url in (f"/api/v1/sources/{source.pk}/", f"/api/v1/sync-runs/{run.pk}/", "/api/v1/sources/",
                "/api/v1/sync-runs/", f"/api/v1/sync-runs/?source={source.pk}"):
        body = client.get(url).content.decode()
        assert SECRET_FILE not in body and str(source.config["path"]) not in body


def test_unreadable_source_cannot_be_changed_synced_or_cancelled(hr_source, personas):
    source, run = hr_source
    client = token_client(personas["power"])
    assert client.patch(f"/api/v1/sources/{source.pk}/", {"groups": []}, format="json").status_code == 404
    assert client.post(f"/api/v1/sources/{source.pk}/sync/", {}, format="json").status_code == 404
    assert client.post(f"/api/v1/sync-runs/{run.pk}/cancel/").status_code == 404
    assert client.delete(f"/api/v1/sources/{source.pk}/").status_code == 404
    source.refresh_from_db()
    assert [g.name for g in source.reader_groups.all()] == ["hr"]


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_readers_and_administrators_see_the_source_and_its_errors(hr_source, personas, who):
    source, run = hr_source
    client = token_client(personas[who])
    shown = _shown(client, source, run)
    assert shown["listed"] and shown["run_listed"] and shown["detail"] == shown["run"] == 200
    detail = client.get(f"/api/v1/sync-runs/{run.pk}/").json()
    assert SECRET_FILE in str(detail["errors"]) and detail["counts"]["failed"] == 1


def test_a_grant_on_the_source_makes_it_visible(hr_source, personas):
    from apps.ingestion import grants

    source, run = hr_source
    client = token_client(personas["bob"])
    assert client.get(f"/api/v1/sources/{source.pk}/").status_code == 404
    grants.grant(source, user=personas["bob"])
    assert client.get(f"/api/v1/sources/{source.pk}/").status_code == 200
    assert client.get(f"/api/v1/sync-runs/{run.pk}/").status_code == 200


def test_failures_in_a_narrower_sub_folder_are_named_only_to_its_readers(roles, personas, tmp_path, settings):
    """A source every signed-in user reads may hold a sub-folder narrowed by its sidecar: the run shows a failing
    file there only to those who could read it, while the source's other failures stay visible to all."""
    settings.MAX_DOCUMENT_BYTES = 200
    root = write_corpus(tmp_path / "share", {
        "handbook.txt": "Holidays are 30 days a year.",
        "too-long.txt": "An open file over the size limit. " * 20,
        "hr/.ragsite-access.json": '{"groups": ["hr"]}',
        f"hr/{SECRET_FILE}": "Names of people to be let go. " * 20,
    })
    source = create_source(name="share", config={"path": str(root)})
    run = sync_now(source)
    assert run.status == "partial" and SECRET_FILE in str(run.errors)

    def named(who) -> list:
        response = token_client(personas[who]).get(f"/api/v1/sync-runs/{run.pk}/")
        assert response.status_code == 200
        return sorted(e["item"] for e in response.json()["errors"])

    assert named("bob") == named("viewer") == ["too-long.txt"]
    assert named("alice") == named("admin") == [f"hr/{SECRET_FILE}", "too-long.txt"]
    listing = token_client(personas["bob"]).get("/api/v1/sync-runs/").content.decode()
    assert SECRET_FILE not in listing and "too-long.txt" in listing
