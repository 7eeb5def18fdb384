"""Shared by the benchmarks: the evaluation collection, a one-machine stack in a temporary DATA_DIR, metrics."""

import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLLECTION = REPO.parent / "shared" / "data" / "msmarco-trecdl-5k"
sys.path.insert(0, str(REPO))


def load_collection(path: Path = COLLECTION):
    corpus = [json.loads(line) for line in (path / "corpus.jsonl").open()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (path / "queries.jsonl").open())}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (path / "qrels.tsv").open():
        query_id, passage_id, grade = line.split()
        qrels[query_id][passage_id] = int(grade)
    judged = {q: t for q, t in queries.items() if any(g > 0 for g in qrels.get(q, {}).values())}
    return corpus, judged, qrels


def ndcg_at(ranked: list[str], judgments: dict[str, int], k=10) -> float:
    """nDCG with exponential gains (2^grade - 1) and log2 discounts, the definition BASELINES.md's reference
    figures use (checked: the dense ranking reproduces its 0.7043 to four places; linear gains give 0.7977)."""
    dcg = sum((2 ** judgments.get(p, 0) - 1) / math.log2(i + 2) for i, p in enumerate(ranked[:k]))
    ideal = sorted(judgments.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], judgments: dict[str, int], k=100) -> float:
    relevant = {p for p, g in judgments.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


class Stack:
    """manage.py commands and a worker against a fresh SQLite DATA_DIR and a dedicated Redis db."""

    def __init__(self, broker_db: int, data_dir: str | None = None, **extra_env):
        self.data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="ragsite-bench-"))
        if not data_dir and not os.environ.get("BENCH_KEEP_DATA"):  # a 100k-chunk database is ~440 MB
            atexit.register(shutil.rmtree, self.data, ignore_errors=True)
        self.broker = f"redis://127.0.0.1:6379/{broker_db}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
        self.env.update({"DATA_DIR": str(self.data), "CELERY_BROKER_URL": self.broker, "HF_HUB_OFFLINE": "1",
                         "RAGSITE_ADMIN_PASSWORD": "bench-password-123", **extra_env})
        import redis

        redis.Redis.from_url(self.broker).flushdb()

    def manage(self, *args) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout.strip()

    def django_here(self):
        """Set this process up against the stack's database (call once, before importing any app module)."""
        os.environ.update({k: self.env[k] for k in ("DATA_DIR", "CELERY_BROKER_URL", "HF_HUB_OFFLINE")})
        os.environ.pop("DATABASE_URL", None)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ragsite.settings")
        import django

        django.setup()
