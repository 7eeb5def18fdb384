"""Ingestion speed through the real worker, against raw SentenceTransformer.encode on the same texts, in one run.

The 5,000 MS MARCO passages of ../shared/data/msmarco-trecdl-5k are written out as files and synced by a real
Celery worker (SQLite, the one-machine default). Printed:
- end-to-end documents per second (first SyncRun started -> finished) divided by raw encode throughput on the
  same passage texts in this process (goal: at least 0.85);
- a re-sync of the unchanged corpus as a fraction of the full sync's time (goal: under 3%, zero embeddings);
- peak resident memory of the worker's pool process (from /proc, sampled while it works);
- the same ratio in CPU seconds (worker processes during the full sync against this process during the raw encode),
  which a machine busy with other work disturbs much less than wall-clock time.

The sync stages its chunks in EMBEDDING_BATCH_CHUNKS batches queued on the `embedding` queue; with one pool process
(the default here, as in CI) the sync embeds them itself, merged into calls of up to EMBEDDING_FLUSH_CHUNKS texts.
`--concurrency 2` runs the worker as the Procfile does on two cores, so the second process takes batches from the
queue.

Usage: .venv/bin/python bench/ingest.py [--limit N] [--concurrency C]
(needs Redis on 127.0.0.1:6379; uses Redis db 8)
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import Stack, load_collection

from tests.processes import REPO, start_worker, stop_process

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int):
    """A process and its children (the prefork pool): (pid, /proc status fields) for each."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if proc.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            yield int(proc.name), fields


def cpu_tree_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its children that are alive."""
    total = 0
    for child, _ in tree(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])  # utime, stime (fields 14 and 15)
    return total / TICKS


def start_pool(env: dict, log_path: Path, concurrency: int) -> subprocess.Popen:
    """Like tests.processes.start_worker, with more than one pool process."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ragsite", "worker", "-Q", "ingestion,embedding,compliance,maintenance",
         "--concurrency", str(concurrency), "-n", f"bench-{os.getpid()}@%h", "-l", "INFO", "--without-gossip",
         "--without-mingle"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while " ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.3)
    return proc


def rss_tree_kb(pid: int) -> int:
    """Resident memory of a process and its children (the prefork pool), in KiB."""
    return sum(int(fields.get("VmRSS", "0 kB").split()[0]) for _, fields in tree(pid))


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
    parser.add_argument("--concurrency", type=int, default=1, help="worker pool processes (Procfile: cores)")
    args = parser.parse_args()
    corpus, _, _ = load_collection()
    corpus = corpus[: args.limit] if args.limit else corpus
    stack = Stack(broker_db=8)
    folder = stack.data / "sources" / "passages"  # inside FILESYSTEM_SOURCE_ROOTS (default: DATA_DIR/sources)
    folder.mkdir(parents=True)
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

    from apps.ingestion.embedding import get_embedder

    embedder = get_embedder()
    embedder.encode(texts[:64])  # load and warm
    started, started_cpu = time.perf_counter(), time.process_time()
    embedder.encode(texts)
    raw_seconds = time.perf_counter() - started
    raw_cpu = time.process_time() - started_cpu
    raw_rate = len(texts) / raw_seconds
    print(f"raw SentenceTransformer.encode: {len(texts)} passages in {raw_seconds:.1f} s -> {raw_rate:.1f}/s "
          f"(batch {settings.EMBEDDING_BATCH_SIZE})")
    del embedder

    if args.concurrency > 1:
        worker = start_pool(stack.env, stack.data / "worker.log", args.concurrency)
    else:
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
        cpu_before = cpu_tree_seconds(worker.pid)
        full = run_sync(stack, "passages")
        sync_cpu = cpu_tree_seconds(worker.pid) - cpu_before
        again = run_sync(stack, "passages")
    finally:
        stop.set()
        sampler.join()
        stop_process(worker)
    rate = full["new"] / full["seconds"]
    print(f"full sync through the worker: {full['new']} documents, {full['embedded']} chunks embedded in "
          f"{full['seconds']:.1f} s -> {rate:.1f} docs/s (failed {full['failed']})")
    print(f"end-to-end / raw encode: {rate / raw_rate:.2f} (goal >= 0.85)")
    print(f"CPU seconds: raw encode {raw_cpu:.1f}, worker during the full sync {sync_cpu:.1f} (concurrency "
          f"{args.concurrency}) -> raw / sync {raw_cpu / sync_cpu:.2f}")
    print(f"re-sync unchanged: {again['seconds']:.2f} s = {again['seconds'] / full['seconds']:.1%} of the full sync "
          f"(goal < 3%), {again['embedded']} embeddings, {again['unchanged']} unchanged")
    print(f"peak worker memory (main + pool processes): {peak[0] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
