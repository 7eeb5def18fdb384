"""The HTTP JSON API connector against a real HTTP server on 127.0.0.1: pagination, incremental pulls on
``updated_since``, pruning through ``ids_url`` or a full id listing, and retries of transient failures only."""

import pytest

from apps.ingestion.connectors.http import HttpConnector
from apps.ingestion.models import Chunk, Document, DocumentAccess, Source, SyncRun
from apps.ingestion.sources import SourceError, create_source
from tests.conftest import sync_now
from tests.ingestion.json_api import JsonApiServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    with JsonApiServer() as server:
        yield server


def http_config(api, **overrides):
    config = {
        "url": f"{api.base}/api/articles",
        "items_path": "data.items",
        "id_field": "id",
        "title_field": "title",
        "text_fields": ["summary", "body"],
        "updated_field": "updated",
        "updated_since_param": "updated_since",
        "next_field": "links.next",
        "ids_url": f"{api.base}/api/ids",
        "ids_path": "ids",
        "groups_field": "readers",
        "backoff_factor": 0.01,  # real backoff, scaled down so the test does not sleep for seconds
        "max_retries": 3,
        "timeout": 5,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def source(api, roles):
    return create_source(name="wiki-api", kind="http", config=http_config(api))


def test_first_sync_follows_next_links(source, api):
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["new"] == 5 and run.counts["seen"] == 5
    cursors = [q.get("cursor") for _, q, _ in api.state.requests_to("/api/articles")]
    assert cursors == [None, None, None, "2", "4"]  # create's check, the run's check, then the three pages
    doc = Document.objects.get(source=source, external_id="item/3")
    assert doc.title == "Parental leave" and doc.content_type == "text/plain"
    assert doc.uri == f"{api.base}/api/articles#item/3"
    assert doc.modified_at.isoformat() == "2024-03-03T09:00:00+00:00"
    assert "twenty-six weeks" in doc.chunks.get(ordinal=0).text
    readers = dict(DocumentAccess.objects.filter(document__source=source)
                   .values_list("document__external_id", "principal"))
    assert readers["item/3"] == "group:hr" and readers["item/1"] == "authenticated"
    source.refresh_from_db()
    assert source.checkpoint == {"field": "updated", "value": "2024-03-05T09:00:00+00:00"}


def test_changed_item_alone_is_pulled_and_reembedded(source, api):
    sync_now(source)
    api.state.articles[2].update(body="Train tickets are reimbursed in first class on trips over four hours.",
                                 updated="2024-04-01T12:00:00+00:00")
    before = len(api.state.log)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["seen"] == 1 and run.counts["updated"] == 1 and run.counts["unchanged"] == 0
    assert run.counts["new"] == 0 and run.counts["deleted"] == 0
    pulls = [q for path, q, _ in api.state.log[before:] if path == "/api/articles" and q]
    assert pulls == [{"updated_since": "2024-03-05T09:00:00+00:00"}]
    assert Chunk.objects.filter(document__external_id="item/2", text__contains="first class").exists()
    source.refresh_from_db()
    assert source.checkpoint["value"] == "2024-04-01T12:00:00+00:00"
    # nothing changed since: nothing listed, checkpoint kept
    run = sync_now(source)
    assert run.counts["seen"] == 0 and run.status == SyncRun.SUCCEEDED
    source.refresh_from_db()
    assert source.checkpoint["value"] == "2024-04-01T12:00:00+00:00"


@pytest.mark.parametrize("with_ids_url", [True, False], ids=["ids_url", "full-listing"])
def test_item_deleted_at_the_source_is_pruned(api, roles, with_ids_url):
    config = http_config(api) if with_ids_url else http_config(api, ids_url=None, ids_path=None)
    source = create_source(name="wiki-api", kind="http", config=config)
    sync_now(source)
    del api.state.articles[4]
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["deleted"] == 1 and run.counts["seen"] == 0
    assert not Document.objects.filter(source=source, external_id="item/4").exists()
    assert Document.objects.filter(source=source).count() == 4
    assert bool(api.state.requests_to("/api/ids")) is with_ids_url


def test_numbered_pages(api, roles):
    source = create_source(name="paged", kind="http",
                           config=http_config(api, next_field=None, page_param="page", ids_url=None, ids_path=None))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5
    pages = [q.get("page") for _, q, _ in api.state.requests_to("/api/articles")]
    assert pages[-4:] == ["1", "2", "3", "4"]  # page 4 is empty: the end


@pytest.mark.parametrize("mode", ["500", "reset", "429"])
def test_transient_failures_are_retried(source, api, mode):
    api.state.fail(mode, times=2, path="/api/articles")
    start = len(api.state.log)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5
    first_page = [status for path, q, status in api.state.log[start:] if path == "/api/articles" and not q]
    expected = {"500": 500, "reset": "reset", "429": 429}[mode]
    assert first_page[:3] == [expected, expected, 200]  # two failures, then the retry that worked


def test_a_timeout_is_retried(source, api):
    config = Source.objects.get(pk=source.pk).config
    Source.objects.filter(pk=source.pk).update(config={**config, "timeout": 0.3})
    api.state.fail("slow", times=1, path="/api/articles")
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["new"] == 5


def test_persistent_server_error_fails_the_run_and_prunes_nothing(source, api):
    sync_now(source)
    source.refresh_from_db()
    checkpoint = source.checkpoint
    del api.state.articles[1]
    api.state.fail("500", path="/api/")
    before = len(api.state.requests_to("/api/articles"))
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == (f"HTTP 500 Internal Server Error from {api.base}/api/articles after 3 retries: "
                           '{"error": "internal error"}')
    assert len(api.state.requests_to("/api/articles")) == before + 4  # one try and three retries, no more
    assert Document.objects.filter(source=source).count() == 5
    source.refresh_from_db()
    assert source.checkpoint == checkpoint


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "did not answer JSON (text/html; it starts '<html><body>Gateway says hello</body></html>')"),
        ("401", "HTTP 401 Unauthorized from {base}/api/ids (check the credentials in headers): "
                '{"error": "invalid token"}'),
    ],
)
def test_permanent_failure_in_the_id_listing_is_not_retried_and_prunes_nothing(source, api, mode, reason):
    sync_now(source)
    api.state.articles[5].update(body="Plants are now watered by a robot.", updated="2024-05-01T00:00:00+00:00")
    del api.state.articles[1]
    api.state.fail(mode, path="/api/ids", skip=1)  # the run's check() gets through; its id listing does not
    ids_before = len(api.state.requests_to("/api/ids"))
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert reason.replace("{base}", api.base) in run.message
    assert run.message.startswith("listing failed after 1 documents")
    assert len(api.state.requests_to("/api/ids")) == ids_before + 2  # check(), then one failing try: no retry
    assert Document.objects.filter(source=source, external_id="item/1").exists()  # not pruned
    source.refresh_from_db()
    assert source.checkpoint["value"] == "2024-03-05T09:00:00+00:00"  # not advanced


def test_garbage_json_on_the_main_listing_fails_with_the_reason(source, api):
    api.state.fail("garbage", path="/api/articles")
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == (f"{api.base}/api/articles did not answer JSON (text/html; it starts "
                           "'<html><body>Gateway says hello</body></html>')")
    assert len(api.state.requests_to("/api/articles")) == 1 + 1  # create's check, then this one: no retry


def test_missing_items_path_is_a_clear_error(api, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="odd", kind="http", config=http_config(api, url=f"{api.base}/api/other-shape"))
    assert err.value.field == "config"
    assert err.value.message == (f"items_path 'data.items' is not in the response from {api.base}/api/other-shape "
                                 "(it has: results)")


def test_next_link_to_another_host_is_not_followed(source, api):
    api.state.next_base = "http://localhost:9"  # same port is irrelevant: another host gets no credentials
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message == ("listing failed after 2 documents: next page link points to another host "
                           "(http://localhost:9/api/articles); not followed")
    assert run.counts["seen"] == 2


def test_connection_refused_is_retried_then_reported(roles, api):
    config = http_config(api)
    with JsonApiServer() as gone:
        dead = gone.base
    with pytest.raises(SourceError) as err:
        create_source(name="dead", kind="http", config={**config, "url": f"{dead}/api/articles", "ids_url": None})
    assert f"cannot reach {dead}/api/articles after 3 retries" in err.value.message
    assert "refused" in err.value.message.lower()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "ftp://example.com/items"}, "url"),
        ({"url": "https://user:pw@example.com/items"}, "url"),
        ({"text_fields": []}, "text_fields"),
        ({"id_field": ""}, "id_field"),
        ({"updated_field": None}, "updated_since_param"),
        ({"page_param": "page"}, "page_param"),
        ({"headers": {"Bad Header": "x"}}, "headers.Bad Header"),
        ({"headers": "Bearer x"}, "headers"),
        ({"max_retries": 50}, "max_retries"),
        ({"depth": 3}, "depth"),
    ],
)
def test_bad_http_settings_name_the_field(api, changes, field):
    from apps.ingestion.connectors.base import ConfigError

    config = {k: v for k, v in {**http_config(api), **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        HttpConnector.validate_config(config)
    assert err.value.field == field
