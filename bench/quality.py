"""Search quality on ../shared/data/msmarco-trecdl-5k through the real pipeline.

The 5,000 passages are written out as files, ingested by a real Celery worker (parse, chunk, embed, index), and
the 43 judged TREC-DL queries are run through the search service as a superuser (every passage readable) in each
mode, in the same run: lexical only, dense only, plain RRF, hybrid without and with (the default) the dense side's
Rocchio pseudo-relevance feedback. nDCG@10 and recall@100 are computed per passage (a passage split into two chunks
counts once, at its best rank).

The hybrid defaults are NOT chosen from these numbers: relative-score fusion with alpha 0.75 are Weaviate's
published defaults for its hybrid query, and the feedback (top 5, Rocchio 0.4/0.6) is Li et al.'s published vector
PRF setting (Pyserini), both fixed before this collection was measured. To say how much of a difference is noise,
the hybrid default is compared per query with the others (wins/losses and a paired bootstrap 95% interval of the
mean nDCG@10 difference). The alpha sweep is for information; its 5-fold cross-validated figure (alpha picked on
four folds, scored on the fifth, 50 random splits) is what choosing alpha here would honestly be worth.

Usage: .venv/bin/python bench/quality.py   (needs Redis on 127.0.0.1:6379; uses Redis db 11; about 2 minutes)
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
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
    passages = stack.data / "sources" / "msmarco"  # inside FILESYSTEM_SOURCE_ROOTS (default: DATA_DIR/sources)
    passages.mkdir(parents=True)
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
          f"(DATA_DIR {stack.data}; with BENCH_KEEP_DATA=1 it is kept for --reuse)")


def evaluate_all(stack, corpus, queries, qrels):
    stack.django_here()
    from django.contrib.auth import get_user_model

    from apps.ingestion.models import Chunk
    from apps.retrieval.search import search

    admin = get_user_model().objects.get(username="admin")
    passage_of = {str(c): Path(e).stem for c, e in Chunk.objects.values_list("id", "document__external_id")}
    print(f"{len(passage_of)} chunks for {len(corpus)} passages")

    def evaluate(prf_depth=None, **kwargs):
        """Per-query nDCG@10 and recall@100 arrays, and the median latency in ms."""
        from django.test import override_settings

        ndcgs, recalls, times = [], [], []
        with override_settings(**({} if prf_depth is None else {"SEARCH_HYBRID_PRF_DEPTH": prf_depth})):
            for query_id, text in queries.items():
                t = time.perf_counter()
                results, _ = search(admin, text, top_k=100, **kwargs)
                times.append(time.perf_counter() - t)
                ranked = list(dict.fromkeys(passage_of[r.chunk_id] for r in results))
                ndcgs.append(ndcg_at(ranked, qrels[query_id]))
                recalls.append(recall_at(ranked, qrels[query_id]))
        return np.array(ndcgs), np.array(recalls), statistics.median(times) * 1000

    runs = {
        "lexical": {"mode": "lexical"},
        "dense": {"mode": "dense"},
        "rrf": {"mode": "hybrid", "fusion": "rrf", "alpha": 0.5, "prf_depth": 0},
        "hybrid, no feedback": {"mode": "hybrid", "prf_depth": 0},
        "hybrid (default)": {"mode": "hybrid"},
    }
    print(f"\n{len(queries)} judged queries; reference figures from BASELINES.md in brackets")
    print(f"{'method':<76} {'nDCG@10':>18} {'recall@100':>20} {'p50 ms':>8}")
    per_query = {}
    for name, kwargs in runs.items():
        ndcg, recall, ms = evaluate(**kwargs)
        per_query[name] = ndcg
        ref = REFERENCE.get(name)
        ref_ndcg = f"({ref[0]:.4f})" if ref else ""
        ref_recall = f"({ref[1]:.4f})" if ref else ""
        label = f"{name} {kwargs}"
        print(f"{label:<76} {ndcg.mean():.4f} {ref_ndcg:>9} {recall.mean():.4f} {ref_recall:>11} {ms:8.1f}")

    print("\nhybrid (default) against each, per query (nDCG@10; paired bootstrap, 10,000 resamples):")
    for name in ("dense", "lexical", "rrf", "hybrid, no feedback"):
        diff = per_query["hybrid (default)"] - per_query[name]
        low, high = paired_bootstrap(diff)
        print(f"  vs {name:<20} mean difference {diff.mean():+.4f}  95% CI [{low:+.4f}, {high:+.4f}]  "
              f"wins {(diff > 1e-9).sum()}, losses {(diff < -1e-9).sum()}, ties {(abs(diff) <= 1e-9).sum()}")

    print("\nalpha sweep, relative-score fusion with feedback (information only; the default was fixed beforehand):")
    alphas = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)
    sweep = {}
    for alpha in alphas:
        sweep[alpha], recall, _ = evaluate(mode="hybrid", alpha=alpha)
        print(f"  alpha {alpha:.2f}: nDCG@10 {sweep[alpha].mean():.4f}  recall@100 {recall.mean():.4f}")
    held_out = cross_validated(sweep)
    print(f"  alpha chosen by 5-fold cross-validation (50 random splits): held-out nDCG@10 {held_out:.4f} "
          f"(in-sample best {max(v.mean() for v in sweep.values()):.4f})")


def paired_bootstrap(diff: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-query differences, resampling queries with replacement."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cross_validated(per_setting: dict, folds: int = 5, repeats: int = 50, seed: int = 0) -> float:
    """Mean held-out score when the setting is picked on the other folds (never on the queries it is scored on)."""
    rng = np.random.default_rng(seed)
    n = len(next(iter(per_setting.values())))
    means = []
    for _ in range(repeats):
        held = np.zeros(n)
        for fold in np.array_split(rng.permutation(n), folds):
            train = np.setdiff1d(np.arange(n), fold)
            best = max(per_setting, key=lambda key: per_setting[key][train].mean())
            held[fold] = per_setting[best][fold]
        means.append(held.mean())
    return float(np.mean(means))


if __name__ == "__main__":
    main()
