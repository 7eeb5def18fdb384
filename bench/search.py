"""Search speed through gunicorn, against the raw cost of the same search in-process.

For each corpus size (10k and 100k chunks of synthetic text with random unit vectors, written straight into the
database: the search cost does not depend on how vectors were made) it starts gunicorn and measures
POST /api/v1/search/ (hybrid, top_k 10) at concurrency 1, 4 and 8, for a user who may read everything and for
one who may read 5% of the corpus. In the same run, in blocks alternating with the API's, it measures the raw cost
at the same concurrency: embedding the query plus the index search (with the feedback round the API does), in
threads of this process. Each line prints API p50 and p95 over raw p50 and p95. It also prints the index's memory.

With --recall it measures the dense side alone instead, in-process: exact numpy search against the approximate
faiss index (apps/retrieval/index/approx.py), recall@10 of the approximate results against the exact ones, and p50
latency of each, for filters letting through 100%, 10%, 5% and 1% of the corpus (classification filters; the 5% is
an access scope), with the nprobe the index uses and a sweep around it. Its vectors are realistic: the real
all-MiniLM-L6-v2 embeddings of the 5,000 MS MARCO passages of ../shared/data (computed once, cached under
~/.cache/ragsite-bench), and past 5,000 chunks mixtures of two of them (weights 0.6-0.9 / rest, a little noise,
renormalised); queries are the 50 real queries plus 150 perturbed passages.

Usage: .venv/bin/python bench/search.py [--sizes 10000 100000] [--requests 200] [--recall]
"""

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from common import COLLECTION, REPO, Stack, load_collection

from tests.processes import stop_process, wait_for_http

WORDS = ("sensor calibration harbour tide gauge buoy salinity pressure firmware warranty invoice supplier payroll "
         "laptop encryption password backup incident escalation vessel mooring telemetry battery antenna cable "
         "survey report quarterly budget travel expenses hotel policy onboarding review holiday parental leave "
         "security network outage printer ticket customer renewal contract service level agreement response").split()


VECTOR_CACHE = Path.home() / ".cache" / "ragsite-bench" / "msmarco-5k-minilm.npz"


def real_vectors():
    """(passage vectors, query vectors) of the MS MARCO collection from the real model; cached after the first run."""
    if VECTOR_CACHE.exists():
        with np.load(VECTOR_CACHE) as data:
            return data["passages"], data["queries"]
    from apps.ingestion.embedding import get_embedder

    corpus, judged, _ = load_collection()
    queries = [json.loads(line)["text"] for line in (COLLECTION / "queries.jsonl").open()]
    embedder = get_embedder()
    print(f"embedding {len(corpus)} passages once (cached in {VECTOR_CACHE}) ...", flush=True)
    passages = embedder.encode([f"{p.get('title', '')} {p['text']}".strip() for p in corpus])
    query_vectors = embedder.encode(queries)
    VECTOR_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(VECTOR_CACHE, passages=passages, queries=query_vectors)
    return passages, query_vectors


def realistic_vectors(n: int, rng) -> np.ndarray:
    passages, _ = real_vectors()
    if n <= len(passages):
        return passages[:n].astype(np.float32)
    extra = n - len(passages)
    i, j = rng.integers(0, len(passages), extra), rng.integers(0, len(passages), extra)
    w = rng.uniform(0.6, 0.9, (extra, 1)).astype(np.float32)
    mixed = w * passages[i] + (1 - w) * passages[j] + rng.normal(0, 0.02, (extra, passages.shape[1])).astype(
        np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.vstack([passages, mixed]).astype(np.float32)


def synthetic_corpus(stack: Stack, chunks: int, restricted_share=0.05, vectors=None):
    """Documents of 5 chunks each; 5% of documents readable by group 'five', the rest by group 'rest'. Documents
    are classified so that 1% are 'restricted', 9% 'confidential' and the rest 'internal'. ``vectors``: one row per
    chunk (random unit vectors when None)."""
    stack.django_here()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db import transaction

    from apps.accounts.roles import ensure_roles
    from apps.ingestion.embedding import get_embedder, vector_to_bytes
    from apps.ingestion.models import Chunk, Document, DocumentAccess, Source, chunk_id_for, document_id_for

    ensure_roles()
    rng = np.random.default_rng(7)
    words = random.Random(7)
    source = Source.objects.create(name="synthetic", kind="filesystem", config={"path": "/"})
    dim, model = get_embedder().dimension, get_embedder().name
    n_docs = chunks // 5
    with transaction.atomic():
        for start in range(0, n_docs, 2000):
            docs, access, rows = [], [], []
            for d in range(start, min(n_docs, start + 2000)):
                doc_id = document_id_for(source.pk, f"doc-{d}")
                classification = "restricted" if d % 100 == 0 else "confidential" if d % 10 == 0 else "internal"
                docs.append(Document(id=doc_id, source=source, external_id=f"doc-{d}", uri=f"synthetic://{d}",
                                     title=f"Document {d}", content_type="text/plain", content_hash=f"{d:064x}",
                                     classification=classification))
                group = "five" if d % int(1 / restricted_share) == 0 else "rest"
                access.append(DocumentAccess(document_id=doc_id, principal=f"group:{group}"))
                if vectors is None:
                    doc_vectors = rng.standard_normal((5, dim)).astype(np.float32)
                    doc_vectors /= np.linalg.norm(doc_vectors, axis=1, keepdims=True)
                else:
                    doc_vectors = vectors[d * 5 : d * 5 + 5]
                for o in range(5):
                    text = " ".join(words.choice(WORDS) for _ in range(60))
                    rows.append(Chunk(id=chunk_id_for(doc_id, o), document_id=doc_id, ordinal=o, text=text,
                                      text_hash=f"{d:032x}{o:032x}", embedding=vector_to_bytes(doc_vectors[o]),
                                      embedding_model=model, embedding_dim=dim))
            Document.objects.bulk_create(docs)
            DocumentAccess.objects.bulk_create(access)
            Chunk.objects.bulk_create(rows, batch_size=1000)
    users = get_user_model().objects
    everyone = users.create_user("everyone", password="bench-password-123")
    everyone.groups.add(Group.objects.get(name="user"), Group.objects.get_or_create(name="five")[0],
                        Group.objects.get_or_create(name="rest")[0])
    five = users.create_user("five", password="bench-password-123")
    five.groups.add(Group.objects.get(name="user"), Group.objects.get(name="five"))
    return everyone, five


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


ROUNDS = 8  # raw and API measurements alternate in this many blocks per (scope, concurrency)


def percentiles(values):
    return statistics.median(values), statistics.quantiles(values, n=100)[94]


def measure_api(base, token, queries, concurrency, n, tag):
    """``tag`` makes every query text new to the web processes' query-vector cache, so each request embeds."""

    def one(i):
        session = sessions[i % concurrency]
        t = time.perf_counter()
        query = f"{queries[i % len(queries)]} {tag} {i}"
        r = session.post(f"{base}/api/v1/search/", json={"query": query, "top_k": 10})
        assert r.status_code == 200, r.text
        return (time.perf_counter() - t) * 1000

    sessions = [requests.Session() for _ in range(concurrency)]
    for s in sessions:
        s.headers["Authorization"] = f"Token {token}"
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # warm every gunicorn worker
        started = time.perf_counter()
        latencies = list(pool.map(one, range(n)))
    return latencies, n / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--recall", action="store_true", help="exact vs approximate dense search (in-process)")
    args = parser.parse_args()
    if args.recall:
        for size in args.sizes:
            subprocess.run([sys.executable, __file__, "--one-recall", str(size)], check=True)
        return
    queries = [" ".join(random.Random(q).choice(WORDS) for _ in range(5)) for q in range(50)]
    # The raw measurement runs with the numeric-library threads the web workers get (ragsite/gunicorn.conf.py:
    # WEB_NUM_THREADS, default 1), so both sides of the ratio embed and search alike.
    threads = os.environ.get("WEB_NUM_THREADS", "1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    print(f"numeric-library threads per process (raw and web workers): {os.environ['OMP_NUM_THREADS']}")
    for size in args.sizes:
        # A fresh interpreter per size keeps each measurement's memory and caches separate.
        subprocess.run([sys.executable, __file__, "--one", str(size), str(args.requests), *queries], check=True)


def raw_search(index, embedder, scope, query: str, kind: str):
    """The raw cost the API is divided by: embedding the query plus the index search of a request with top_k 10
    (search_page asks the index for one more, to know whether a next page exists). ``hybrid`` is what the API
    serves: lexical side, dense side and fusion, with the pseudo-relevance-feedback round (a first hybrid search and
    the feedback chunks' vectors read from the database) when SEARCH_HYBRID_PRF_DEPTH is on, as search_page does it;
    ``dense`` is the dense side alone, for comparison."""
    from django.conf import settings

    from apps.retrieval import search as service
    from apps.retrieval.index import IndexFilter

    vector = embedder.encode([query])[0]
    if kind == "dense":
        return index.search(vector, scope, 11, query=query, mode="dense")
    alpha, flt = settings.SEARCH_HYBRID_ALPHA, IndexFilter()
    if getattr(settings, "SEARCH_HYBRID_PRF_DEPTH", 0) > 0 and hasattr(service, "feedback_vector"):
        vector = service.feedback_vector(index, vector, scope, query, alpha=alpha, fusion="relative_score",
                                         filters=flt)
    return index.search(vector, scope, 11, query=query, mode="hybrid", alpha=alpha, fusion="relative_score",
                        filters=flt)


def one_size(size: int, n: int, queries: list[str]):
    port = 8790
    stack = Stack(broker_db=10, PORT=str(port), WEB_CONCURRENCY="2", WEB_THREADS="4", SEARCH_THROTTLE_RATE="100000/s",
                  SEARCH_TOKEN_THROTTLE_RATE="100000/s", CACHE_URL="redis://127.0.0.1:6379/10")
    stack.manage("migrate", "--noinput", "-v0")
    everyone, five = synthetic_corpus(stack, size)
    from apps.accounts.access import access_scope
    from apps.accounts.models import ApiToken
    from apps.ingestion.embedding import get_embedder
    from apps.retrieval.index import get_index

    embedder = get_embedder()
    embedder.encode(["warm"])
    before = rss_mb()
    index = get_index()
    t = time.perf_counter()
    index.rebuild()  # also writes the snapshot the gunicorn workers start from
    built = time.perf_counter() - t
    state = index._state
    nbytes = state.vectors.nbytes + state.tf.data.nbytes + state.tf.indices.nbytes + state.tf.indptr.nbytes
    print(f"\n== {size:,} chunks: index built from the DB in {built:.1f} s; arrays {nbytes / 2**20:.0f} MiB "
          f"({nbytes / 2**20 * 100_000 / size:.0f} MiB per 100k chunks), process RSS +{rss_mb() - before:.0f} MiB")

    scopes = {label: access_scope(user) for label, user in (("all", everyone), ("5%", five))}
    for label, scope in scopes.items():  # the dense side alone, for comparison (not a divisor)
        raw_search(index, embedder, scope, "warm", "dense")
        times = []
        for i in range(100):
            t = time.perf_counter()
            raw_search(index, embedder, scope, f"{queries[i % len(queries)]} raw dense {i}", "dense")
            times.append((time.perf_counter() - t) * 1000)
        p50, p95 = percentiles(times)
        print(f"raw embed+search ( dense), sees {label:>3}: p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")

    def measure_raw(scope, concurrency, count, tag):
        """The raw hybrid search at the API's concurrency, in threads of this process (torch, numpy and faiss
        release the GIL): what the machine's cores allow c searches at once, before any API cost."""

        def timed(i):
            q = f"{queries[i % len(queries)]} {tag} {i}"
            t = time.perf_counter()
            raw_search(index, embedder, scope, q, "hybrid")
            return (time.perf_counter() - t) * 1000

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(timed, range(count)))

    tokens = {label: ApiToken.issue(user)[1] for label, user in (("all", everyone), ("5%", five))}
    web = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "ragsite/gunicorn.conf.py", "ragsite.wsgi"],
                           cwd=REPO, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{base}/healthz"), "gunicorn did not start"
        p50s = {}
        for concurrency in (1, 4, 8):
            # Raw and API measurements, of both users, alternate in ROUNDS blocks, so a slow spell of this shared
            # machine lands on both sides of every ratio (API/raw, filtered/unfiltered) instead of on one.
            raw_times, api_times, rates = defaultdict(list), defaultdict(list), defaultdict(list)
            for label in scopes:
                measure_raw(scopes[label], concurrency, concurrency * 2, "warm")
            for r in range(ROUNDS):
                block = max(concurrency, n // ROUNDS)
                for label in scopes:
                    raw_times[label] += measure_raw(scopes[label], concurrency, block, f"raw{label}{concurrency}r{r}")
                    latencies, rps = measure_api(base, tokens[label], queries, concurrency, block,
                                                 f"{label}{concurrency}r{r}")
                    api_times[label] += latencies
                    rates[label].append(rps)
            for label in scopes:
                (raw50, raw95), (p50, p95) = percentiles(raw_times[label]), percentiles(api_times[label])
                p50s[(label, concurrency)] = p50
                print(f"sees {label:>3}, concurrency {concurrency}: raw p50 {raw50:6.1f} ms  p95 {raw95:6.1f} ms | "
                      f"API p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  {statistics.mean(rates[label]):5.1f} req/s | "
                      f"API/raw p50 {p50 / raw50:.2f}x  p95 {p95 / raw95:.2f}x", flush=True)
        for concurrency in (1, 4, 8):
            ratio = p50s[("5%", concurrency)] / p50s[("all", concurrency)]
            print(f"filtered (5%) / unfiltered API p50 at concurrency {concurrency}: {ratio:.2f}x")
    finally:
        stop_process(web)


def recall_size(size: int):
    """Exact vs approximate dense search through the embedded index, at allowed shares of 100%, 10%, 5% and 1%."""
    stack = Stack(broker_db=10)
    stack.manage("migrate", "--noinput", "-v0")
    stack.django_here()
    rng = np.random.default_rng(11)
    vectors = realistic_vectors(size, rng)
    synthetic_corpus(stack, size, vectors=vectors)
    from django.test import override_settings

    from apps.accounts.access import AccessScope
    from apps.retrieval.index.approx import approx_settings
    from apps.retrieval.index.embedded import EmbeddedIndex
    from apps.retrieval.search import parse_filters

    passages, query_vectors = real_vectors()
    extra = passages[rng.integers(0, len(passages), 150)] + rng.normal(0, 0.03, (150, passages.shape[1]))
    queries = np.vstack([query_vectors, extra]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    everyone = AccessScope(frozenset(), unrestricted=True)
    directory = stack.data / "recall-index"
    with override_settings(INDEX_APPROX={"enabled": False}):
        exact = EmbeddedIndex(directory / "exact")
        t = time.perf_counter()
        exact.rebuild()
        print(f"\n== {size:,} chunks (realistic vectors): exact index loaded in {time.perf_counter() - t:.1f} s")
    config = approx_settings()
    with override_settings(INDEX_APPROX={"min_rows": 0, "min_allowed": 0, "min_fraction": 0.0}):
        approx = EmbeddedIndex(directory / "approx")
        t = time.perf_counter()
        approx.rebuild()
        built = time.perf_counter() - t
    print(f"approximate index: faiss IVF-Flat, nlist {approx._approx.nlist}, built with the load in {built:.1f} s")
    five = AccessScope(frozenset({"group:five"}))  # the 5% of documents group 'five' may read
    shares = (("100%", everyone, None), ("10%", everyone, {"classification": ["restricted", "confidential"]}),
              ("5%", five, None), ("1%", everyone, {"classification": ["restricted"]}))
    for label, scope, filters in shares:
        flt = parse_filters(filters)

        def run(index, queries=queries, flt=flt, scope=scope):
            times, found = [], []
            index.search(queries[0], scope, 10, mode="dense", filters=flt)  # warm the mask cache
            for q in queries:
                t = time.perf_counter()
                hits = index.search(q, scope, 10, mode="dense", filters=flt)
                times.append((time.perf_counter() - t) * 1000)
                found.append({h.chunk_id for h in hits})
            return statistics.median(times), found

        exact_ms, truth = run(exact)
        line = f"allowed {label:>4}: exact p50 {exact_ms:6.2f} ms"
        forced = dataclasses.replace(config, min_allowed=0, min_fraction=0.0)  # measure faiss at every share
        for nprobe in sorted({config.nprobe // 2, config.nprobe, config.nprobe * 2}):
            approx._approx.config = dataclasses.replace(forced, nprobe=nprobe)
            ms, found = run(approx)
            recall = statistics.mean(len(a & b) / max(1, len(b)) for a, b in zip(found, truth, strict=True))
            mark = " (default)" if nprobe == config.nprobe else ""
            line += f" | faiss nprobe {nprobe}{mark}: p50 {ms:6.2f} ms, recall@10 {recall:.3f}"
        approx._approx.config = config  # the defaults decide which path a real search takes
        allowed = len(approx._allowed(approx._state, scope, flt).rows)
        chosen = "approximate" if approx._approx.worth_it(allowed) else "exact"
        print(f"{line} | the index uses: {chosen}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one-recall":
        recall_size(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--one":
        one_size(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        main()
