"""What read-your-writes costs a search: the per-search check "has a sync ended past what this index applied?"
(apps/retrieval/index embedded.py and weaviate.py, `_behind_a_finished_sync`), timed in-process.

It migrates a fresh database (SQLite in a temporary DATA_DIR, or the PostgreSQL database named by --database-url,
which it empties first: give it a scratch database), writes --runs ended sync runs and as many outbox rows, and
times, over --calls calls each: the check of an embedded index, the check of a Weaviate index (Weaviate itself is
not called; its cursor row is read only when an ended sync is past what the process last saw), and `SELECT 1`
through the ORM's connection as the floor of any query. It prints p50 and p95 in microseconds. Both checks answer
"not behind", as on almost every search. Before, the search path paid a clock comparison only.

Usage: .venv/bin/python bench/freshness.py [--database-url postgres://postgres@127.0.0.1:5432/scratch]
       [--runs 20000] [--calls 5000]
"""

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import REPO


def _setup(database_url: str):
    data = tempfile.mkdtemp(prefix="ragsite-bench-freshness-")
    if not os.environ.get("BENCH_KEEP_DATA"):
        atexit.register(shutil.rmtree, data, ignore_errors=True)
    os.environ.update({"DATA_DIR": data, "HF_HUB_OFFLINE": "1", "DJANGO_SETTINGS_MODULE": "ragsite.settings"})
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    if database_url:
        subprocess.run([sys.executable, "manage.py", "flush", "--no-input"], cwd=REPO, check=False,
                       capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=REPO, check=True, capture_output=True)
    import django

    django.setup()


def _timed(fn, calls: int) -> tuple[float, float]:
    fn()  # connection opened, statements warmed
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    _setup(args.database_url)

    from django.db import connection

    from apps.ingestion.models import Source, SyncRun
    from apps.retrieval.index.embedded import EmbeddedIndex
    from apps.retrieval.index.weaviate import WeaviateIndex
    from apps.retrieval.models import IndexChange, IndexCursor
    from apps.retrieval.outbox import outbox_head

    source = Source.objects.create(name="bench-freshness", kind="filesystem", config={"path": "/"})
    IndexChange.objects.bulk_create([IndexChange(document_id=_uuid(i)) for i in range(args.runs)],
                                    batch_size=5000)
    head = outbox_head()
    SyncRun.objects.bulk_create([SyncRun(source=source, status="succeeded", outbox_seq=head - args.runs + i + 1)
                                 for i in range(args.runs)], batch_size=5000)
    embedded = EmbeddedIndex(os.environ["DATA_DIR"])
    embedded.refresh()  # up to date: the check answers "no", as on almost every search
    weaviate = WeaviateIndex("http://127.0.0.1:1", grpc_port=2)  # never contacted: only its cursor row is read
    IndexCursor.objects.update_or_create(key=weaviate.cursor_key, defaults={"seq": head})
    assert not embedded._behind_a_finished_sync() and not weaviate._behind_a_finished_sync()

    def select_one():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    print(f"{connection.vendor}, {args.runs} ended sync runs, {args.calls} calls each (p50 / p95, microseconds)")
    for label, fn in (("SELECT 1 (floor of any query)", select_one),
                      ("embedded index check", embedded._behind_a_finished_sync),
                      ("Weaviate index check", weaviate._behind_a_finished_sync)):
        p50, p95 = _timed(fn, args.calls)
        print(f"  {label:32} {p50:8.0f} {p95:8.0f}")
    weaviate.close()


def _uuid(i: int):
    import uuid

    return uuid.UUID(int=i + 1)


if __name__ == "__main__":
    main()
