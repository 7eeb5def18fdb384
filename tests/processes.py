"""Starting and stopping real processes for tests and benchmarks; imports nothing from Django."""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start_worker(env: dict, log_path: Path, timeout=90, concurrency=1, name: str | None = None) -> subprocess.Popen:
    """Start `celery worker` on all four queues with ``concurrency`` pool processes and return once it has logged
    that it is ready (connected and consuming). ``name``: its node name (default: a new unique one), so a test
    can restart "the same" worker."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    name = name or f"pytest-{os.getpid()}-{time.monotonic_ns()}@%h"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "ragsite", "worker", "-Q", "ingestion,embedding,compliance,maintenance",
         "--concurrency", str(concurrency), "-n", name, "-l", "INFO",
         "--without-gossip", "--without-mingle"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a test can SIGKILL the pool children too
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if " ready." in log_path.read_text():
            return proc
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"celery worker was not ready within {timeout}s:\n{log_path.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill_hard(proc: subprocess.Popen):
    """SIGKILL the worker and its pool children at once: no shutdown, no acknowledgement, like a lost machine."""
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


class WorkerHandle:
    """A worker process that a test may kill and the fixture restarts."""

    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path = env, log_path
        self.proc = start_worker(env, log_path)

    def kill(self):
        kill_hard(self.proc)

    def ensure_running(self):
        if self.proc.poll() is not None:
            self.proc = start_worker(self.env, self.log_path.with_suffix(f".{time.monotonic_ns()}.log"))

    def stop(self):
        stop_process(self.proc)


def wait_for_http(url: str, timeout: float = 60) -> bool:
    """Poll a URL until it answers (any status); False if it never did within the timeout."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=(1, 10))
            return True
        except requests.RequestException:  # not listening yet, or accepted but still loading (a read timeout)
            time.sleep(0.2)
    return False
