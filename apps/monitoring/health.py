"""Readiness checks, one per component. Each returns a dict with "ok" and stays under a couple of seconds."""

import time
from pathlib import Path

from django.conf import settings
from django.db import connection


def _timed(check):
    started = time.perf_counter()
    try:
        detail = check() or {}
        result = {"ok": True, **detail}
    except Exception as exc:  # a readiness probe reports every failure, whatever its type
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def check_broker():
    from kombu import Connection

    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return {"url": _redact(settings.CELERY_BROKER_URL)}


def check_cache():
    """The shared cache's Redis, which holds the rate limits: without it search and answer answer 503."""
    from django.core.cache import cache

    cache._cache.get_client(write=True).ping()
    return {"url": _redact(settings.CACHES["default"]["LOCATION"])}


def check_vector_index():
    from apps.retrieval.index import get_index

    status = get_index().status()
    return status


def check_embedding_model():
    from apps.ingestion.embedding import get_embedder, model_path

    embedder = get_embedder()
    path = Path(model_path())
    if not embedder.loaded and not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise FileNotFoundError(f"no model files at {path}")
    return {"name": embedder.name, "loaded": embedder.loaded}


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "cache": check_cache,
    "vector_index": check_vector_index,
    "embedding_model": check_embedding_model,
}


def readiness() -> tuple[bool, dict]:
    components = {name: _timed(check) for name, check in CHECKS.items()}
    return all(c["ok"] for c in components.values()), components


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
