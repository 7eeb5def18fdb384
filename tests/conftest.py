"""Shared fixtures: personas, a small corpus on disk, API clients with tokens, and a real Celery worker."""

import json
import os
import tempfile
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.processes import WorkerHandle

REPO = Path(__file__).resolve().parent.parent

SMALL_CORPUS = {
    "it/vpn.md": "# Connecting to the VPN\n\nInstall the GateKeeper client and sign in with your badge number. "
    "The VPN gateway for the Leeds office is vpn-leeds.internal.\n\n## Troubleshooting\n\n"
    "If the tunnel drops every ten minutes, turn off the power-saving mode of your wireless adapter.",
    "policies/expenses.txt": "Travel and expenses\n\nTrain tickets are reimbursed in standard class only. "
    "Hotel nights are capped at 140 pounds outside London and 210 pounds in London.\n\n"
    "Claims must be filed within 60 days with receipts attached.",
    "policies/security.html": "<html><head><title>Information security</title><script>var tracking=1;</script>"
    "</head><body><nav>Home | Policies</nav><h1>Information security</h1><p>Laptops must use full-disk "
    "encryption. Lost devices are reported to the service desk within one hour.</p><h2>Passwords</h2>"
    "<p>Passwords are at least fourteen characters and never reused.</p><footer>Copyright</footer></body></html>",
    "hr/.ragsite-access.json": '{"groups": ["hr"]}',
    "hr/parental-leave.md": "# Parental leave\n\nEmployees receive twenty-six weeks of fully paid parental leave "
    "after six months of service. Ask the people team to start the paperwork.",
}


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """Each test run counts rate limits in its own cache namespace (the cache is a shared Redis)."""
    settings.CACHES = {"default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{os.getpid()}"}}


# The tests' corpora live in temporary folders and their HTTP stand-ins on 127.0.0.1: allowed here explicitly (the
# defaults deny both; tests/ingestion/test_source_reach.py shows it). Set in the environment too, for the worker and
# other manage.py processes the tests start.
TEST_SOURCE_ROOTS = [tempfile.gettempdir(), str(REPO / "demo")]
TEST_EGRESS_ALLOW = ["127.0.0.0/8", "::1"]
os.environ.setdefault("FILESYSTEM_SOURCE_ROOTS", ",".join(TEST_SOURCE_ROOTS))
os.environ.setdefault("CONNECTOR_EGRESS_ALLOW", ",".join(TEST_EGRESS_ALLOW))


@pytest.fixture(autouse=True)
def _reachable_test_sources(settings):
    settings.FILESYSTEM_SOURCE_ROOTS = [Path(p).resolve() for p in TEST_SOURCE_ROOTS]
    settings.CONNECTOR_EGRESS_ALLOW = list(TEST_EGRESS_ALLOW)


@pytest.fixture(autouse=True)
def _isolated_index(settings, tmp_path):
    """Each test builds its vector index from its own database rows and keeps snapshots in its own dir."""
    from apps.retrieval.index import get_index

    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    get_index.cache_clear()
    yield
    get_index.cache_clear()


@pytest.fixture
def roles(db):
    from django.contrib.auth.models import Group

    from apps.accounts.roles import ensure_roles

    ensure_roles()  # a transactional test's flush empties the groups the data migration made
    for department in ("hr", "finance"):
        Group.objects.get_or_create(name=department)


@pytest.fixture
def alice(roles):
    """Member of hr, ordinary user role: reads public and HR documents."""
    return UserFactory(username="alice", groups=["user", "hr"])


@pytest.fixture
def bob(roles):
    """Ordinary user, no department group: reads public documents only."""
    return UserFactory(username="bob", groups=["user"])


@pytest.fixture
def charlie(roles):
    """No role at all: may not search."""
    return UserFactory(username="charlie")


@pytest.fixture
def admin_user(roles):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("root", "root@example.com", "correct horse battery")


def token_client(user) -> APIClient:
    from apps.accounts.models import ApiToken

    _, key = ApiToken.issue(user, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def admin_form_data(client, url) -> dict:
    """The change form's current values, as the browser would post them back."""
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if name == "reader_groups":
            data[name] = [g.pk for g in value] if value else []
        elif isinstance(value, dict | list):
            data[name] = json.dumps(value)
        elif value is not None:
            data[name] = value
    for formset in response.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        for name in ("TOTAL_FORMS", "INITIAL_FORMS", "MIN_NUM_FORMS", "MAX_NUM_FORMS"):
            data[f"{formset.formset.prefix}-{name}"] = management[name].value()
    return data


def write_corpus(root: Path, files: dict) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus", SMALL_CORPUS)


def sync_now(source, **kwargs):
    """Run a sync in this process (the worker's code path, minus the broker)."""
    from apps.ingestion.models import SyncRun
    from apps.ingestion.sync import run_sync

    run = SyncRun.objects.create(source=source, **kwargs)
    run_sync(run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def indexed_source(db, corpus_dir, roles):
    from apps.ingestion.sources import create_source

    source = create_source(name="handbook", config={"path": str(corpus_dir)})
    run = sync_now(source)
    assert run.status == "succeeded", run.errors
    return source


# --- a real Celery worker ---------------------------------------------------------------------------------


def _worker_env(database_url: str, data_dir: Path) -> dict:
    env = os.environ.copy()
    # Small embedding groups, so a test corpus of a few hundred chunks is written in several transactions and a
    # worker killed mid-sync leaves a partly written source behind (the production default is 512).
    env.update({"DATABASE_URL": database_url, "DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1",
                "EMBEDDING_FLUSH_CHUNKS": "64"})
    return env


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real worker process on the real broker, pointed at the test database."""
    import redis
    from django.conf import settings
    from django.db import connection

    cfg = connection.settings_dict
    if cfg["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the worker tests run against PostgreSQL; set DATABASE_URL (make test does)")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # no stale messages from an earlier run
    url = f"postgres://{cfg['USER']}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    data_dir = tmp_path_factory.mktemp("worker-data")
    log_path = data_dir / "worker.log"
    handle = WorkerHandle(_worker_env(url, data_dir), log_path)
    yield handle
    handle.stop()


@pytest.fixture
def worker(celery_worker):
    """The session's worker, restarted first if an earlier test killed it."""
    celery_worker.ensure_running()
    return celery_worker
