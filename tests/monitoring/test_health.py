import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_healthz():
    response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_reports_each_component():
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["components"]) == {"database", "broker", "cache", "vector_index", "embedding_model"}
    assert all(c["ok"] for c in body["components"].values())


def test_readyz_is_503_when_the_broker_is_down(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["components"]["broker"]["ok"] is False and "error" in body["components"]["broker"]
    assert body["components"]["database"]["ok"] is True


def test_readyz_is_503_when_the_cache_is_down(settings):
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["components"]["cache"]["ok"] is False and "Connection" in body["components"]["cache"]["error"]
    assert body["components"]["broker"]["ok"] is True


def test_readyz_is_503_when_the_model_is_missing(settings, tmp_path):
    from apps.ingestion.embedding import _embedder_for

    settings.EMBEDDING_MODEL = str(tmp_path / "no-such-model")
    try:
        response = Client().get("/readyz")
    finally:
        _embedder_for.cache_clear()
    assert response.status_code == 503
    assert "no model files" in response.json()["components"]["embedding_model"]["error"]


def test_metrics_exposes_prometheus_text():
    Client().get("/healthz")
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content


def test_openapi_schema_renders():
    from rest_framework.test import APIClient

    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert "/api/v1/search/" in schema["paths"] and "/api/v1/sources/{id}/sync/" in schema["paths"]


def test_admin_lists_the_operational_models(admin_user):
    client = Client()
    client.force_login(admin_user)
    for path in ("ingestion/source", "ingestion/document", "ingestion/chunk", "ingestion/syncrun",
                 "compliance/auditevent", "accounts/apitoken"):
        response = client.get(f"/admin/{path}/")
        assert response.status_code == 200, path
    assert client.get("/admin/compliance/auditevent/add/").status_code == 403
