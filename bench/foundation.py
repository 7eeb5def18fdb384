"""Foundation numbers on the one-machine default stack (SQLite, embedded index, Redis, a real worker, gunicorn):

- ingestion of the demo corpus through the worker: documents and chunks per second;
- POST /api/v1/search/ latency through gunicorn over 100 queries (p50, p95), against the raw cost of embedding
  the query and searching the index in this process, measured in the same run.

Usage: .venv/bin/python bench/foundation.py   (needs Redis on 127.0.0.1:6379; uses Redis db 12)
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.processes import start_worker, stop_process, wait_for_http  # noqa: E402

QUERIES = [q["query"] for q in json.loads((REPO / "demo/queries.json").read_text())]


def main():
    data = Path(tempfile.mkdtemp(prefix="ragsite-bench-"))
    broker = "redis://127.0.0.1:6379/12"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    env.update({"DATA_DIR": str(data), "CELERY_BROKER_URL": broker, "HF_HUB_OFFLINE": "1",
                "RAGSITE_ADMIN_PASSWORD": "bench-password-123", "PORT": "8765", "WEB_CONCURRENCY": "2"})

    def manage(*args):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    import redis

    redis.Redis.from_url(broker).flushdb()
    manage("migrate", "--noinput", "-v0")
    manage("bootstrap")  # creates the demo source on demo/corpus
    worker = start_worker(env, data / "worker.log")
    try:
        manage("sync_source", "demo", "--wait")
    finally:
        stop_process(worker)
    run = json.loads(manage("shell", "-c", (
        "import json; from apps.ingestion.models import SyncRun, Chunk; r = SyncRun.objects.get(); "
        "print(json.dumps({'seconds': (r.finished_at - r.started_at).total_seconds(), 'docs': r.items_new, "
        "'chunks': Chunk.objects.count()}))")).splitlines()[-1])
    print(f"ingest (worker, SQLite): {run['docs']} documents, {run['chunks']} chunks in {run['seconds']:.2f} s "
          f"-> {run['docs'] / run['seconds']:.1f} docs/s, {run['chunks'] / run['seconds']:.1f} chunks/s "
          "(includes loading the model once in the worker)")

    token = manage("create_token", "admin")
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "ragsite/gunicorn.conf.py", "ragsite.wsgi"],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = "http://127.0.0.1:8765"
        assert wait_for_http(f"{base}/healthz"), "gunicorn did not start"
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        for q in QUERIES:  # warm: model loaded in both workers, query cache not reused below
            session.post(f"{base}/api/v1/search/", json={"query": q + " (warm-up)", "top_k": 10})
        api = []
        for i in range(100):
            query = f"{QUERIES[i % len(QUERIES)]} #{i}"  # distinct text: no query-cache hits
            t = time.perf_counter()
            response = session.post(f"{base}/api/v1/search/", json={"query": query, "top_k": 10})
            api.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200, response.text
    finally:
        stop_process(web)

    os.environ.update({k: env[k] for k in ("DATA_DIR", "CELERY_BROKER_URL", "HF_HUB_OFFLINE")})
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragsite.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from apps.accounts.access import access_scope
    from apps.ingestion.embedding import get_embedder
    from apps.retrieval.index import get_index

    admin = get_user_model().objects.get(username="admin")
    embedder, index = get_embedder(), get_index()
    index.search(embedder.encode(["warm"])[0], access_scope(admin), 10)
    raw = []
    for i in range(100):
        query = f"{QUERIES[i % len(QUERIES)]} #{i} raw"
        t = time.perf_counter()
        index.search(embedder.encode([query])[0], access_scope(admin), 10)
        raw.append((time.perf_counter() - t) * 1000)

    def pct(values, p):
        return statistics.quantiles(values, n=100)[p - 1]

    print(f"search API through gunicorn, 100 queries, concurrency 1: p50 {statistics.median(api):.1f} ms, "
          f"p95 {pct(api, 95):.1f} ms")
    print(f"raw embed + index search in-process:                 p50 {statistics.median(raw):.1f} ms, "
          f"p95 {pct(raw, 95):.1f} ms")
    print(f"API overhead ratio (p50 api / p50 raw): {statistics.median(api) / statistics.median(raw):.2f}x")


if __name__ == "__main__":
    main()
