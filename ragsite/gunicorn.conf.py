"""gunicorn settings for the web process.

Several workers share one Prometheus registry through prometheus_client's multiprocess mode: the directory must be
set before any worker imports prometheus_client, and cleared when the server starts so stale samples from a
previous run do not add up.
"""

import os
import shutil
from pathlib import Path

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
accesslog = "-"

# Threads of the numeric libraries (torch for the query embedding, OpenBLAS/OpenMP under numpy and faiss) in each
# worker. One by default: a query is one short sentence, so a second thread buys little even on an idle machine,
# and with several workers and request threads on few cores the libraries' thread pools fight each other (measured
# on the 2-core machine under load: query embedding p50 11 ms with 1 thread against 34-390 ms with 2; see README
# "Benchmarks"). Read when the workers import torch and numpy, which happens after this file is loaded.
_num_threads = os.environ.get("WEB_NUM_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _num_threads)

_data_dir = Path(os.environ.get("DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
# gunicorn's control socket (gunicornc) defaults to ~/.gunicorn/gunicorn.ctl, one path for every stack a user runs
# on the machine: a second stack's server would take over the first one's. Each stack's lives in its own DATA_DIR.
control_socket = str(_data_dir / "gunicorn.ctl")
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_data_dir / "prometheus")))
# Made here too, not only in on_starting: `gunicorn --check-config` loads the application without starting.
_metrics_dir.mkdir(parents=True, exist_ok=True)


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Warm what every search needs before the worker takes requests, so no request pays for it: the embedding
    model (loaded once per process; ~5 s) and the vector index (snapshot plus the outbox since). A failure here is
    logged, not fatal: the first request then loads lazily, or reports the index as unavailable."""
    import logging

    from django.db import connections

    log = logging.getLogger("ragsite.gunicorn")
    try:
        from apps.ingestion.embedding import get_embedder

        get_embedder().encode_query("warm up")
    except Exception:
        log.exception("could not load the embedding model at start-up; the first search will try again")
    try:
        from apps.retrieval.index import get_index

        get_index().refresh()
    except Exception:
        log.exception("could not load the vector index at start-up; the first search will try again")
    finally:
        connections.close_all()  # request threads open their own
    # The model and the index leave ~500k objects that the cyclic garbage collector walks on every full
    # collection: 260 ms measured, a stall of whichever request triggers it. Full collections are rare here (none
    # in 1,500 searches), but these objects live as long as the worker anyway: move them out of its sight.
    import gc

    gc.collect()
    gc.freeze()
