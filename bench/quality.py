"""Search quality on ../shared/data/msmarco-trecdl-5k through the real pipeline.

The 5,000 passages are written out as files, ingested by a real Celery worker (parse, chunk, embed, index), and
the 43 judged TREC-DL queries are run through the search service as a superuser (every passage readable) in each
mode, in the same run: lexical only, dense only, hybrid with the defaults, plain RRF. nDCG@10 and recall@100 are
computed per passage (a passage split into two chunks counts once, at its best rank).

The hybrid defaults are NOT chosen from these numbers: relative-score fusion with alpha 0.75 are Weaviate's
published defaults for its hybrid query, adopted before this collection was measured. The alpha sweep printed at
the end is for information only.

Usage: .venv/bin/python bench/quality.py   (needs Redis on 127.0.0.1:6379; uses Redis db 11; about 2 minutes)
"""

import argparse
import statistics
import time
from pathlib import Path

from common import Stack, load_collection, ndcg_at, recall_at

from tests.processes import start_worker, stop_process

REFERENCE = {"lexical": (0.5748, 0.7341), "dense": (0.7043, 0.8032), "rrf": (0.6837, 0.8048)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", metavar="DATA_DIR", help="evaluate an already ingested stack (skip ingestion)")
    args = parser.parse_args()
    corpus, queries, qrels = load_collection()
    stack = Stack(broker_db=11, data_dir=args.reuse)
    if args.reuse:
        stack.manage("migrate", "--noinput", "-v0")
    else:
        ingest(stack, corpus)
    evaluate_all(stack, corpus, queries, qrels)


def ingest(stack, corpus):
    passages = stack.data / "msmarco"
    passages.mkdir()
    for row in corpus:
        text = f"{row['title']}\n\n{row['text']}" if row["title"] else row["text"]
        (passages / f"{row['_id']}.txt").write_text(text)

    stack.manage("migrate", "--noinput", "-v0")
    stack.manage("bootstrap", "--no-demo")
    stack.manage("add_source", "msmarco", "--path", str(passages))
    worker = start_worker(stack.env, stack.data / "worker.log")
    started = time.perf_counter()
    try:
        stack.manage("sync_source", "msmarco", "--wait", "--timeout", "1800")
    finally:
        stop_process(worker)
    print(f"ingested {len(corpus)} passages through the worker in {time.perf_counter() - started:.1f} s "
          f"(DATA_DIR {stack.data}; --reuse it to evaluate again)")


def evaluate_all(stack, corpus, queries, qrels):
    stack.django_here()
    from django.contrib.auth import get_user_model

    from apps.ingestion.models import Chunk
    from apps.retrieval.search import search

    admin = get_user_model().objects.get(username="admin")
    passage_of = {str(c): Path(e).stem for c, e in Chunk.objects.values_list("id", "document__external_id")}
    print(f"{len(passage_of)} chunks for {len(corpus)} passages")

    def evaluate(**kwargs):
        ndcgs, recalls, times = [], [], []
        for query_id, text in queries.items():
            t = time.perf_counter()
            results, _ = search(admin, text, top_k=100, **kwargs)
            times.append(time.perf_counter() - t)
            ranked = list(dict.fromkeys(passage_of[r.chunk_id] for r in results))
            ndcgs.append(ndcg_at(ranked, qrels[query_id]))
            recalls.append(recall_at(ranked, qrels[query_id]))
        return statistics.mean(ndcgs), statistics.mean(recalls), statistics.median(times) * 1000

    runs = {
        "lexical": {"mode": "lexical"},
        "dense": {"mode": "dense"},
        "rrf": {"mode": "hybrid", "fusion": "rrf", "alpha": 0.5},
        "hybrid (default)": {"mode": "hybrid"},
    }
    print(f"\n{len(queries)} judged queries; reference figures from BASELINES.md in brackets")
    print(f"{'method':<36} {'nDCG@10':>18} {'recall@100':>20} {'p50 ms':>8}")
    for name, kwargs in runs.items():
        ndcg, recall, ms = evaluate(**kwargs)
        ref = REFERENCE.get(name)
        ref_ndcg = f"({ref[0]:.4f})" if ref else ""
        ref_recall = f"({ref[1]:.4f})" if ref else ""
        label = f"{name} {kwargs}"
        print(f"{label:<36} {ndcg:.4f} {ref_ndcg:>9} {recall:.4f} {ref_recall:>11} {ms:8.1f}")

    print("\nalpha sweep, relative-score fusion (information only; the default was fixed beforehand):")
    for alpha in (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0):
        ndcg, recall, _ = evaluate(mode="hybrid", alpha=alpha)
        print(f"  alpha {alpha:.2f}: nDCG@10 {ndcg:.4f}  recall@100 {recall:.4f}")


if __name__ == "__main__":
    main()
