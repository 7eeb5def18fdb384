"""The SQL connector against the real PostgreSQL and the real MariaDB on this machine: first pull, incremental
pulls on a modified column, deletions found through present_ids, failing queries and bad credentials."""

from datetime import timedelta

import pytest

from apps.ingestion.connectors.base import ConfigError
from apps.ingestion.connectors.sql import SqlConnector
from apps.ingestion.models import Chunk, Document, DocumentAccess, Source, SyncRun
from apps.ingestion.secrets import encrypt_config
from apps.ingestion.sources import SourceError, create_source
from tests.conftest import sync_now
from tests.ingestion.sql_sources import (
    MARIADB_SOURCE,
    PG_DATABASE,
    QUERY,
    T0,
    TABLE,
    SourceDatabase,
    articles_table,
    pg_database,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def pg_source_database():
    with pg_database() as url:
        yield url


@pytest.fixture(params=["postgresql", "mariadb"])
def srcdb(request):
    url = request.getfixturevalue("pg_source_database") if request.param == "postgresql" else MARIADB_SOURCE
    with articles_table(request.param, url) as db:
        yield db


def sql_config(db: SourceDatabase, **overrides):
    config = {"url": db.url, "query": QUERY, "id_column": "id", "modified_column": "modified_at",
              "title_column": "title", "text_template": "{title}\n\n{body}", "groups_column": "readers"}
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.fixture
def source(srcdb, roles):
    return create_source(name="kb-db", kind="sql", config=sql_config(srcdb))


def test_first_sync_indexes_every_row(source, srcdb):
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, (run.message, run.errors)
    assert run.counts["new"] == 3 and run.counts["seen"] == 3 and run.counts["failed"] == 0
    doc = Document.objects.get(source=source, external_id="row/3")
    assert doc.title == "Parental leave" and doc.content_type == "text/plain"
    assert doc.uri.endswith("#row/3") and "@" not in doc.uri
    assert doc.chunks.get(ordinal=0).text.startswith("Parental leave\n\nEmployees receive twenty-six weeks")
    readers = {}
    for external_id, principal in DocumentAccess.objects.filter(document__source=source).values_list(
            "document__external_id", "principal"):
        readers.setdefault(external_id, set()).add(principal)
    assert readers == {"row/1": {"authenticated"}, "row/2": {"group:finance"},
                       "row/3": {"group:hr", "group:finance"}}
    source.refresh_from_db()
    assert source.checkpoint == {"column": "modified_at", "type": "datetime", "value": "2024-03-01T11:00:00.123456"}


def test_updated_row_alone_is_listed_and_reembedded(source, srcdb):
    sync_now(source)
    untouched = set(Chunk.objects.filter(document__external_id="row/1").values_list("id", "created_at"))
    srcdb.update(2, body="Train tickets are reimbursed in first class on journeys over four hours.",
                 modified_at=T0 + timedelta(days=1))
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.items_updated == 1
    assert run.counts["seen"] == 1 and run.counts["unchanged"] == 0 and run.counts["new"] == 0  # others not listed
    assert Chunk.objects.filter(document__external_id="row/2", text__contains="first class").exists()
    assert set(Chunk.objects.filter(document__external_id="row/1").values_list("id", "created_at")) == untouched
    source.refresh_from_db()
    assert source.checkpoint["value"] == "2024-03-02T09:00:00.123456"
    again = sync_now(source)
    assert again.counts["seen"] == 0 and again.status == SyncRun.SUCCEEDED


def test_deleted_row_is_pruned_through_present_ids(source, srcdb):
    sync_now(source)
    srcdb.delete(1)
    run = sync_now(source)
    assert run.status == SyncRun.SUCCEEDED, run.message
    assert run.counts["seen"] == 0 and run.counts["deleted"] == 1
    assert set(Document.objects.filter(source=source).values_list("external_id", flat=True)) == {"row/2", "row/3"}


def test_failing_query_fails_the_run_and_prunes_nothing(source, srcdb):
    sync_now(source)
    source.refresh_from_db()
    checkpoint = source.checkpoint
    srcdb.delete(1)
    srcdb.rename_column("body", "body_text")
    run = sync_now(source)
    assert run.status == SyncRun.FAILED
    assert run.message.startswith("query failed on ")
    expected = {"postgresql": [f"column {TABLE}.body does not exist"],
                "mariadb": [f"Unknown column '{TABLE}.body' in ", "(error 1054)"]}[srcdb.backend]
    assert all(part in run.message for part in expected), run.message
    assert Document.objects.filter(source=source).count() == 3
    source.refresh_from_db()
    assert source.checkpoint == checkpoint


def test_template_naming_a_missing_column_is_refused_at_save(srcdb, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="kb-db", kind="sql", config=sql_config(srcdb, text_template="{title}\n\n{summary}"))
    assert err.value.field == "config.text_template"
    assert err.value.message == ("names {summary}, but the query returns no column 'summary'; "
                                 "it returns: id, title, body, readers, modified_at")
    assert not Source.objects.exists()


def test_unknown_table_is_refused_at_save(srcdb, roles):
    with pytest.raises(SourceError) as err:
        create_source(name="kb-db", kind="sql", config=sql_config(srcdb, query="SELECT * FROM h3_nowhere"))
    expected = {"postgresql": 'relation "h3_nowhere" does not exist',
                "mariadb": "Table 'test.h3_nowhere' doesn't exist (error 1146)"}[srcdb.backend]
    assert err.value.field == "config" and err.value.message.endswith(expected)


# MariaDB checks the password. The local PostgreSQL trusts every local connection (pg_hba "trust"), so a wrong
# password cannot fail there; a role that does not exist is its bad credential instead.
BAD_CREDENTIALS = {
    "mariadb": ("mysql+pymysql://root:wrong-h3@127.0.0.1:3306/test",
                "cannot connect to mysql://127.0.0.1:3306/test as root: Access denied for user 'root'@"),
    "postgresql": (f"postgresql+psycopg://h3_nobody:wrong-h3@127.0.0.1:5432/{PG_DATABASE}",
                   f"cannot connect to postgresql://127.0.0.1:5432/{PG_DATABASE} as h3_nobody: connection failed: "),
}


def test_bad_credentials_are_a_clear_error(srcdb, roles):
    url, reason = BAD_CREDENTIALS[srcdb.backend]
    with pytest.raises(SourceError) as err:
        create_source(name="kb-db", kind="sql", config=sql_config(srcdb, url=url))
    assert err.value.field == "config" and err.value.message.startswith(reason), err.value.message
    assert "wrong-h3" not in err.value.message
    # at run time: a source whose stored credentials stopped working fails its run and keeps its documents
    source = create_source(name="kb-db", kind="sql", config=sql_config(srcdb))
    sync_now(source)
    Source.objects.filter(pk=source.pk).update(
        config=encrypt_config(SqlConnector.validate_config(sql_config(srcdb, url=url)), SqlConnector.secret_fields))
    srcdb.delete(1)
    run = sync_now(source)
    assert run.status == SyncRun.FAILED and run.message.startswith(reason), run.message
    assert Document.objects.filter(source=source).count() == 3


def test_without_modified_column_every_sync_is_a_full_pull(srcdb, roles):
    source = create_source(name="kb-db", kind="sql", config=sql_config(srcdb, modified_column=None))
    assert sync_now(source).counts["new"] == 3
    srcdb.update(3, body="Parental leave is now thirty weeks.")
    run = sync_now(source)
    assert run.counts["seen"] == 3 and run.counts["updated"] == 1 and run.counts["unchanged"] == 2
    source.refresh_from_db()
    assert source.checkpoint == {}


def test_the_checkpoint_is_a_bound_parameter(srcdb):
    """A checkpoint value spliced into the SQL would turn this into OR 1=1 and return every row."""
    connector = SqlConnector(sql_config(srcdb, modified_column="title"))
    since = {"column": "title", "type": "string", "value": "F' OR '1'='1"}
    ids = {raw.external_id for raw in connector.documents(since)}
    assert ids == {"row/2", "row/3"}  # "Travel..." and "Parental..." sort after "F'"; "Connecting..." does not
    assert connector.next_checkpoint() == {"column": "title", "type": "string", "value": "Travel and expenses"}


VALID = {"url": "postgresql+psycopg://kb:pw@db.example:5432/kb", "query": "SELECT * FROM kb", "id_column": "id",
         "text_template": "{title}\n\n{body}"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "sqlite:////etc/ragsite.sqlite3"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "postgresql+psycopg://kb@db.example/kb?password=pw"}, "url"),
        ({"url": "postgresql+psycopg://kb@db.example"}, "url"),
        ({"query": "  "}, "query"),
        ({"query": "SELECT * FROM kb; DROP TABLE kb"}, "query"),
        ({"id_column": None}, "id_column"),
        ({"modified_column": ""}, "modified_column"),
        ({"text_template": "{title"}, "text_template"),
        ({"text_template": "{title.__class__}"}, "text_template"),
        ({"text_template": "{0}"}, "text_template"),
        ({"text_template": "no columns at all"}, "text_template"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"table": "kb"}, "table"),
    ],
)
def test_bad_sql_settings_name_the_field(changes, field):
    config = {k: v for k, v in {**VALID, **changes}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        SqlConnector.validate_config(config)
    assert err.value.field == field


def test_password_is_taken_out_of_the_url():
    config = SqlConnector.validate_config({**VALID, "query": "SELECT * FROM kb;\n"})
    assert config["url"] == "postgresql+psycopg://kb@db.example:5432/kb"
    assert config["password"] == "pw"
    assert config["query"] == "SELECT * FROM kb"
    # a plain scheme gets the installed driver; a password typed into the URL wins over a stored one
    again = SqlConnector.validate_config({**VALID, "url": "mysql://kb:new@db.example/kb", "password": "old"})
    assert again["url"] == "mysql+pymysql://kb@db.example/kb" and again["password"] == "new"
    assert SqlConnector.validate_config(config) == config  # stable: validating the stored form changes nothing


def test_rows_stream_through_a_server_side_cursor(pg_source_database):
    """PostgreSQL shows the source session fetching from a declared cursor, not holding a whole result set."""
    from sqlalchemy import text

    with articles_table("postgresql", pg_source_database) as db:
        connector = SqlConnector(sql_config(db))
        rows = connector.documents(None)
        try:
            first = next(rows)
            with db.engine.connect() as conn:
                queries = conn.execute(text("SELECT query FROM pg_stat_activity WHERE datname = :db AND pid <> "
                                            "pg_backend_pid()"), {"db": PG_DATABASE}).scalars().all()
            assert any(q.startswith("FETCH FORWARD") for q in queries), queries
            assert [first.external_id] + [raw.external_id for raw in rows] == ["row/1", "row/2", "row/3"]
        finally:
            rows.close()  # an open read transaction would block the table's DROP
