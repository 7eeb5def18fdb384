"""Ingestion speed through the real worker, against raw SentenceTransformer.encode on the same texts, in one run.

The 5,000 MS MARCO passages of ../shared/data/msmarco-trecdl-5k are written out as files and synced by a real
Celery worker (SQLite, the one-machine default). Printed:
- end-to-end documents per second (first SyncRun started -> finished) divided by raw encode throughput on the
  same passage texts in this process (goal: at least 0.85);
- a re-sync of the unchanged corpus as a fraction of the full sync's time (goal: under 3%, zero embeddings);
- peak resident memory of the worker's pool process (from /proc, sampled while it works).

Usage: .venv/bin/python bench/ingest.py [--limit N]   (needs Redis on 127.0.0.1:6379; uses Redis db 8)
"""

import argparse
import json
import threading
import time
from pathlib import Path

from common import Stack, load_collection

from tests.processes import start_worker, stop_process


def rss_tree_kb(pid: int) -> int:
    """Resident memory of a process and its children (the prefork pool), in KiB."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if proc.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def run_sync(stack, name, full=False):
    args = ["sync_source", name, "--wait", "--timeout", "3600"] + (["--full"] if full else [])
    stack.manage(*args)
    return json.loads(stack.manage("shell", "-c", (
        "import json; from apps.ingestion.models import SyncRun; r = SyncRun.objects.latest('created_at'); "
        "print(json.dumps({'seconds': (r.finished_at - r.started_at).total_seconds(), 'seen': r.items_seen, "
        "'new': r.items_new, 'unchanged': r.items_unchanged, 'embedded': r.chunks_embedded, "
        "'failed': r.items_failed}))")).splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=None, help="use only the first N passages")
    args = parser.parse_args()
    corpus, _, _ = load_collection()
    corpus = corpus[: args.limit] if args.limit else corpus
    stack = Stack(broker_db=8)
    folder = stack.data / "passages"
    folder.mkdir()
    texts = []
    for row in corpus:
        text = f"{row['title']}\n\n{row['text']}" if row["title"] else row["text"]
        (folder / f"{row['_id']}.txt").write_text(text)
        texts.append(row["text"])
    stack.manage("migrate", "--noinput", "-v0")
    stack.manage("bootstrap", "--no-demo")
    stack.manage("add_source", "passages", "--path", str(folder))

    # Raw model throughput on the same texts, same batch size, in this process.
    stack.django_here()
    from django.conf import settings

    from apps.retrieval.embedder import get_embedder

    embedder = get_embedder()
    embedder.encode(texts[:64])  # load and warm
    started = time.perf_counter()
    embedder.encode(texts)
    raw_seconds = time.perf_counter() - started
    raw_rate = len(texts) / raw_seconds
    print(f"raw SentenceTransformer.encode: {len(texts)} passages in {raw_seconds:.1f} s -> {raw_rate:.1f}/s "
          f"(batch {settings.EMBEDDING_BATCH_SIZE})")
    del embedder

    worker = start_worker(stack.env, stack.data / "worker.log")
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_tree_kb(worker.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        full = run_sync(stack, "passages")
        again = run_sync(stack, "passages")
    finally:
        stop.set()
        sampler.join()
        stop_process(worker)
    rate = full["new"] / full["seconds"]
    print(f"full sync through the worker: {full['new']} documents, {full['embedded']} chunks embedded in "
          f"{full['seconds']:.1f} s -> {rate:.1f} docs/s (failed {full['failed']})")
    print(f"end-to-end / raw encode: {rate / raw_rate:.2f} (goal >= 0.85)")
    print(f"re-sync unchanged: {again['seconds']:.2f} s = {again['seconds'] / full['seconds']:.1%} of the full sync "
          f"(goal < 3%), {again['embedded']} embeddings, {again['unchanged']} unchanged")
    print(f"peak worker memory (main + pool processes): {peak[0] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
