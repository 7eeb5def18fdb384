#!/usr/bin/env bash
# The whole suite against PostgreSQL and Redis, with a real Celery worker; lint and migration checks first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_system_packages "${TEST_SYSTEM_PACKAGES[@]}"
ensure_postgres
ensure_redis
ensure_mariadb

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ragsite}"
export CELERY_BROKER_URL="${TEST_BROKER_URL:-redis://127.0.0.1:6379/14}"
export CACHE_URL="${TEST_CACHE_URL:-redis://127.0.0.1:6379/9}"
export DATA_DIR="${DATA_DIR:-$(mktemp -d -t ragsite-test.XXXXXX)}"
export SECRET_KEY="test-only-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# One audit HMAC key for the test process and the worker it starts (each has its own DATA_DIR).
export AUDIT_HMAC_KEY="${AUDIT_HMAC_KEY:-test-only-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"

echo "== ruff"
.venv/bin/ruff check .
echo "== lint-imports (the layers in .importlinter)"
.venv/bin/lint-imports --no-cache
echo "== makemigrations --check"
env -u DATABASE_URL .venv/bin/python manage.py makemigrations --check --dry-run >/dev/null
echo "== pytest (DATABASE_URL=${DATABASE_URL%%\?*}, broker ${CELERY_BROKER_URL})"
exec .venv/bin/python -m pytest "$@"
