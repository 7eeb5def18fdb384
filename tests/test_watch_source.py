"""watch_source: a change under a filesystem source's path queues a sync within seconds, a burst of changes makes
one sync, and the access sidecar counts as a change. The real thing runs the command as a subprocess against the
test database, with a real Celery worker doing the syncs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.ingestion.connectors import get_connector
from apps.ingestion.models import Document, DocumentAccess, SyncRun
from apps.ingestion.sources import create_source
from apps.ingestion.watch import ChangeFilter, Debouncer
from tests.conftest import REPO, _worker_env, token_client, write_corpus
from tests.processes import stop_process


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_burst_of_changes_is_one_sync_request():
    clock = FakeClock()
    debouncer = Debouncer(quiet=1.0, max_wait=5.0, clock=clock)
    assert not debouncer.due()
    for _ in range(50):  # fifty changes within half a second
        debouncer.notify()
        clock.now += 0.01
    assert not debouncer.due()  # still settling
    clock.now += 1.0
    assert debouncer.due() and not debouncer.due()  # once per burst
    # steady churn that never pauses still syncs, max_wait after it began
    fired = 0
    for _ in range(120):
        debouncer.notify()
        clock.now += 0.1
        fired += debouncer.due()
    assert fired == 2


@pytest.mark.django_db
def test_which_changes_matter(tmp_path, roles):
    root = write_corpus(tmp_path / "share", {"a.txt": "x"})
    source = create_source(name="share", config={"path": str(root), "exclude": ["drafts/*"]})
    relevant = ChangeFilter(get_connector(source)).relevant
    assert relevant(root / "notes/new.md", False, "created")
    assert relevant(str(root / "a.txt").encode(), False, "modified")
    assert relevant(root / "hr/.ragsite-access.json", False, "modified")  # the sidecar changes who may read
    assert relevant(root / "old", True, "deleted") and not relevant(root / "old", True, "modified")
    assert not relevant(root / ".a.txt.swp", False, "created")  # hidden: the connector skips it
    assert not relevant(root / ".git/index", False, "modified")
    assert not relevant(root / ".git/.ragsite-access.json", False, "modified")
    assert not relevant(root / "a.txt~", False, "created")  # not a type the connector reads
    assert not relevant(root / "drafts/plan.md", False, "created")  # excluded
    assert not relevant(tmp_path / "elsewhere.txt", False, "created")


def _wait_for(what, predicate, timeout, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"watch_source exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout} s" + (f"\n{log.read_text()[-3000:]}" if log else ""))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_watch_source_syncs_new_files_and_sidecar_changes(worker, alice, bob, tmp_path):
    from django.db import connection

    share = write_corpus(tmp_path / "share", {"notes/welcome.txt": "Welcome to the harbour office wiki."})
    source = create_source(name="share", config={"path": str(share)})
    cfg = connection.settings_dict
    url = f"postgres://{cfg['USER']}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
    data_dir = tmp_path / "watcher-data"
    data_dir.mkdir()
    log = tmp_path / "watch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "watch_source", "share", "--debounce", "0.5", "--max-wait", "5"],
            cwd=REPO, env=_worker_env(url, data_dir), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for("the watcher starting", lambda: "watching " in log.read_text(), 60, proc, log)
        # at start it syncs what changed while nobody watched
        first = _wait_for("the start-up sync", lambda: SyncRun.objects.filter(
            source=source, trigger="watch-start", status="succeeded").first(), 60, proc, log)
        assert first.items_new == 1

        # a burst of new files: one sync picks them all up, within seconds
        written_at = time.monotonic()
        for i in range(5):
            (share / "notes" / f"crane-{i}.md").write_text(
                f"# Crane {i}\n\nHarbour crane {i} is greased every {i + 2} weeks by the day shift.")
        _wait_for("the new files being indexed",
                  lambda: Document.objects.filter(source=source, external_id__startswith="notes/crane-").count() == 5,
                  15, proc, log)
        assert time.monotonic() - written_at < 15
        runs = SyncRun.objects.filter(source=source, trigger="watch")
        # The documents show before the run writes its final counts: wait for it to finish, then count.
        _wait_for("the watch sync finishing", lambda: runs.exclude(status__in=("pending", "running")).exists(), 15,
                  proc, log)
        assert runs.count() == 1 and runs.get().status == "succeeded" and runs.get().items_new == 5

        def found(user, query):
            response = token_client(user).post("/api/v1/search/", {"query": query, "top_k": 5}, format="json")
            return [r for r in response.json()["results"] if "crane-3" in r["uri"]]

        assert _wait_for("search finding a watched file", lambda: found(bob, "how often is harbour crane 3 greased"),
                         15)

        # restricting the folder with an access sidecar is a change too
        (share / "notes" / ".ragsite-access.json").write_text(json.dumps({"groups": ["hr"]}))
        _wait_for("the sidecar's readers being applied", lambda: set(DocumentAccess.objects.filter(
            document__source=source).values_list("principal", flat=True)) == {"group:hr"}, 15, proc, log)
        assert SyncRun.objects.filter(source=source, trigger="watch").count() == 2
        _wait_for("bob losing sight of the restricted files", lambda: not found(bob, "harbour crane 3 greased"), 15)
        assert found(alice, "how often is harbour crane 3 greased")

        # a deleted file is pruned
        (share / "notes" / "crane-0.md").unlink()
        _wait_for("the deleted file being pruned", lambda: not Document.objects.filter(
            source=source, external_id="notes/crane-0.md").exists(), 15, proc, log)
    finally:
        stop_process(proc)  # SIGTERM to the PID we started
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert Path(log).read_text().rstrip().endswith("stopped")
