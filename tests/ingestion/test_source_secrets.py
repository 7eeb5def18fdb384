"""Secrets in source configs: encrypted in the database, masked in the API and the admin, kept when an update
sends the mask back, decrypted for the connector at run time (the servers below refuse wrong credentials)."""

import json

import pytest
from django.db import connection

from apps.compliance.models import AuditEvent
from apps.ingestion.models import Document, Source, SyncRun
from apps.ingestion.secrets import MASK, decrypt_config, is_secret
from tests.conftest import admin_form_data, sync_now, token_client
from tests.factories import UserFactory
from tests.ingestion.json_api import JsonApiServer
from tests.ingestion.sql_sources import QUERY, READER, articles_table, mariadb_reader

pytestmark = pytest.mark.django_db

DB_PASSWORD = "pw-h3-Sup3r-secret"
API_TOKEN = "tok-h3-0123456789abcdef"


@pytest.fixture
def power(roles):
    return UserFactory(username="pat", groups=["power_user"])


@pytest.fixture
def reader_db():
    """A MariaDB table readable only by an account with a password: a sync works only with the real one."""
    with articles_table("mariadb", "mysql+pymysql://root@127.0.0.1:3306/test"), \
            mariadb_reader(DB_PASSWORD) as user:
        yield f"mysql+pymysql://{user}:{DB_PASSWORD}@127.0.0.1:3306/test"


@pytest.fixture
def api():
    with JsonApiServer() as server:
        server.state.token = API_TOKEN  # every request without the right bearer token gets 401
        yield server


def sql_payload(url, **config):
    return {"name": "kb-db", "kind": "sql", "config": {"url": url, "query": QUERY, "id_column": "id",
                                                       "modified_column": "modified_at", "title_column": "title",
                                                       "text_template": "{title}\n\n{body}", **config}}


def raw_config_text(source_id) -> str:
    """The config column exactly as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CAST(config AS text) FROM ingestion_source WHERE id = %s", [source_id])
        return cursor.fetchone()[0]


def assert_nowhere_in_clear(source_id, secret):
    assert secret not in json.dumps(Source.objects.get(pk=source_id).config)
    assert secret not in raw_config_text(source_id)
    assert not any(secret in json.dumps(data) for data in AuditEvent.objects.values_list("data", flat=True))


def test_database_password_is_encrypted_masked_and_used(power, reader_db):
    client = token_client(power)
    response = client.post("/api/v1/sources/", sql_payload(reader_db), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["config"]["url"] == f"mysql+pymysql://{READER}@127.0.0.1:3306/test"
    assert body["config"]["password"] == MASK
    assert DB_PASSWORD not in response.content.decode()

    source = Source.objects.get(pk=body["id"])
    assert is_secret(source.config["password"])
    assert DB_PASSWORD not in source.config["url"]
    assert_nowhere_in_clear(source.pk, DB_PASSWORD)
    assert decrypt_config(source.config)["password"] == DB_PASSWORD

    for path in ("/api/v1/sources/", f"/api/v1/sources/{source.pk}/"):
        shown = client.get(path)
        assert shown.status_code == 200 and DB_PASSWORD not in shown.content.decode()
        assert MASK in shown.content.decode()

    run = sync_now(source)  # the account refuses any other password, so this proves the runtime decryption
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 3


def test_sending_the_mask_back_keeps_the_stored_password(power, reader_db):
    client = token_client(power)
    created = client.post("/api/v1/sources/", sql_payload(reader_db), format="json").json()
    stored_before = Source.objects.get(pk=created["id"]).config["password"]

    shown = client.get(f"/api/v1/sources/{created['id']}/").json()
    config = {**shown["config"], "title_column": "body"}  # an edit to another setting, the mask sent back
    assert config["password"] == MASK
    response = client.patch(f"/api/v1/sources/{created['id']}/", {"config": config}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["config"]["password"] == MASK

    source = Source.objects.get(pk=created["id"])
    assert source.config["title_column"] == "body"
    assert decrypt_config(source.config)["password"] == DB_PASSWORD
    assert_nowhere_in_clear(source.pk, DB_PASSWORD)
    # an update that does not touch the config keeps it as stored, still encrypted
    assert client.patch(f"/api/v1/sources/{source.pk}/", {"schedule": "0 3 * * *"}, format="json").status_code == 200
    resaved = Source.objects.get(pk=source.pk).config["password"]
    assert is_secret(resaved) and resaved != stored_before  # sealed afresh (Fernet tokens carry a random IV)
    assert decrypt_config(Source.objects.get(pk=source.pk).config)["password"] == DB_PASSWORD
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message

    # a new password replaces the old one, and is checked against the server before it is saved
    wrong = {**config, "password": "not-the-password"}
    response = client.patch(f"/api/v1/sources/{source.pk}/", {"config": wrong}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        f"config: cannot connect to mysql://127.0.0.1:3306/test as {READER}: Access denied")
    assert decrypt_config(Source.objects.get(pk=source.pk).config)["password"] == DB_PASSWORD


@pytest.mark.parametrize("where", ["field", "url"])
def test_the_mask_with_nothing_stored_is_refused(power, reader_db, where):
    url = reader_db.replace(f":{DB_PASSWORD}", "" if where == "field" else f":{MASK}")
    payload = sql_payload(url, password=MASK)
    response = token_client(power).post("/api/v1/sources/", payload, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("config.password: '********' stands for the stored secret")
    assert not Source.objects.exists()


def test_api_headers_are_encrypted_masked_and_used(power, api):
    client = token_client(power)
    payload = {"name": "wiki", "kind": "http", "config": {
        "url": f"{api.base}/api/articles", "items_path": "data.items", "id_field": "id", "title_field": "title",
        "text_fields": ["body"], "updated_field": "updated", "updated_since_param": "updated_since",
        "next_field": "links.next", "headers": {"Authorization": f"Bearer {API_TOKEN}", "X-Team": "kb"},
        "backoff_factor": 0.01, "max_retries": 1}}
    response = client.post("/api/v1/sources/", payload, format="json")
    assert response.status_code == 201, response.content
    shown = response.json()["config"]
    assert shown["headers"] == {"Authorization": MASK, "X-Team": MASK}
    assert API_TOKEN not in response.content.decode()
    source = Source.objects.get(pk=response.json()["id"])
    assert_nowhere_in_clear(source.pk, API_TOKEN)

    response = client.put(f"/api/v1/sources/{source.pk}/", {**payload, "config": shown}, format="json")
    assert response.status_code == 200, response.content
    source.refresh_from_db()
    assert decrypt_config(source.config)["headers"] == {"Authorization": f"Bearer {API_TOKEN}", "X-Team": "kb"}
    run = sync_now(source)  # the server answers 401 to anything but the real token
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5


def test_admin_shows_the_mask_and_keeps_the_secret(admin_user, reader_db, client):
    from apps.ingestion.sources import create_source

    source = create_source(**sql_payload(reader_db))
    client.force_login(admin_user)
    page = client.get(f"/admin/ingestion/source/{source.pk}/change/")
    assert page.status_code == 200
    assert DB_PASSWORD not in page.content.decode() and MASK in page.content.decode()
    masked = {**decrypt_config(source.config), "password": MASK}
    url = f"/admin/ingestion/source/{source.pk}/change/"
    form = admin_form_data(client, url)  # every field and inline management form, as the browser posts them
    form.update({"config": json.dumps(masked), "schedule": "15 4 * * *"})
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    source.refresh_from_db()
    assert source.schedule == "15 4 * * *"
    assert is_secret(source.config["password"])
    assert decrypt_config(source.config)["password"] == DB_PASSWORD
    assert_nowhere_in_clear(source.pk, DB_PASSWORD)
    assert sync_now(source).status == SyncRun.SUCCEEDED


def test_a_changed_secret_key_fails_the_run_clearly_and_fallbacks_still_decrypt(roles, reader_db, settings):
    from apps.ingestion.sources import create_source

    source = create_source(**sql_payload(reader_db))
    assert sync_now(source).status == SyncRun.SUCCEEDED
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-brand-new-secret-key-for-this-test"
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message.startswith("cannot decrypt the stored secret password: SECRET_KEY changed")
    assert Document.objects.filter(source=source).count() == 3  # nothing pruned
    settings.SECRET_KEY_FALLBACKS = [old_key]
    assert sync_now(source).status == SyncRun.SUCCEEDED
