"""The one-machine defaults as separate processes: the SQLite stack with a real worker, and gunicorn with
several workers sharing one /metrics."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import SMALL_CORPUS, write_corpus
from tests.processes import REPO, start_worker, stop_process, wait_for_http

pytestmark = pytest.mark.slow


def _env(data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
    env.update({"DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **extra})
    return env


def _manage(env, *args):
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_sqlite_default_stack_end_to_end(tmp_path):
    import redis

    broker = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(broker).flushdb()
    env = _env(tmp_path / "data", CELERY_BROKER_URL=broker, RAGSITE_ADMIN_PASSWORD="smoke-test-password-1")
    corpus = write_corpus(tmp_path / "corpus", SMALL_CORPUS)
    _manage(env, "migrate", "--noinput", "-v0")
    assert "created superuser 'admin'" in _manage(env, "bootstrap", "--no-demo")
    _manage(env, "add_source", "smoke", "--path", str(corpus))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        out = _manage(env, "sync_source", "smoke", "--wait", "--timeout", "180")
    finally:
        stop_process(worker)
    assert "succeeded" in out
    results = json.loads(_manage(env, "search", "VPN tunnel keeps dropping", "--user", "admin", "--json"))["results"]
    assert results[0]["uri"].endswith("/it/vpn.md")
    assert "verified" in _manage(env, "verify_audit")
    db = sqlite3.connect(tmp_path / "data" / "ragsite.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert list((tmp_path / "data" / "index").glob("embedded-*.npz"))  # the worker wrote the index snapshot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    port = _free_port()
    env = _env(tmp_path / "data", PORT=str(port), WEB_CONCURRENCY="3")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "ragsite/gunicorn.conf.py", "ragsite.wsgi"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        if not wait_for_http(f"{base}/healthz"):
            pytest.fail(f"gunicorn did not start:\n{(tmp_path / 'gunicorn.log').read_text()[-2000:]}")
        for _ in range(30):
            assert requests.get(f"{base}/healthz", timeout=5, headers={"Connection": "close"}).status_code == 200
        text = requests.get(f"{base}/metrics", timeout=5).text
    finally:
        stop_process(proc)
    totals = [line for line in text.splitlines()
              if line.startswith('django_http_responses_total_by_status_total{status="200"}')]
    assert totals, text[:2000]
    assert float(totals[0].split()[-1]) >= 31  # every worker's requests, not one worker's share
    pids = {line.split('pid="')[1].split('"')[0] for line in text.splitlines() if 'pid="' in line}
    assert len(pids) <= 1 or not pids  # samples are merged, not listed per worker process


def test_gunicorn_check_config_passes_on_a_fresh_data_dir(tmp_path):
    """`gunicorn --check-config` loads the application without starting a server; it used to fail because the
    metrics directory was made only when a server starts."""
    env = _env(tmp_path / "data")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "ragsite/gunicorn.conf.py", "--check-config",
                             "ragsite.wsgi"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "data" / "prometheus").is_dir()


def test_flower_refuses_to_run_open_and_asks_for_credentials(tmp_path):
    env = _env(tmp_path / "data")
    env.pop("FLOWER_BASIC_AUTH", None)
    flower = [sys.executable, "-m", "celery", "-A", "ragsite", "flower", "--conf=ragsite/flowerconfig.py"]
    refused = subprocess.run(flower, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "FLOWER_BASIC_AUTH" in refused.stderr

    port = _free_port()
    env.update({"FLOWER_BASIC_AUTH": "ops:s3cret-pass", "FLOWER_PORT": str(port)})
    proc = subprocess.Popen(flower, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                anonymous = requests.get(url, timeout=5)
                break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            pytest.fail("flower did not start")
        assert anonymous.status_code == 401
        assert requests.get(url, auth=("ops", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("ops", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        stop_process(proc)
