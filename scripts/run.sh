#!/usr/bin/env bash
# `make run`: migrate, bootstrap, start the Procfile (web, worker, beat, flower), ingest the demo corpus through
# the worker, then print where everything is. Ctrl-C stops what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PORT="${PORT:-8000}"
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p var

if [ -z "${CELERY_BROKER_URL:-}" ]; then
    ensure_redis || exit 1
fi
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
    if [ ! -s var/flower_auth ]; then
        (umask 077; echo "admin:$(python -c 'import secrets; print(secrets.token_urlsafe(12))')" > var/flower_auth)
    fi
    FLOWER_BASIC_AUTH="$(cat var/flower_auth)"
    export FLOWER_BASIC_AUTH
fi

python manage.py migrate --noinput -v0
python manage.py collectstatic --noinput -v0
python manage.py bootstrap

honcho start -f Procfile &
HONCHO_PID=$!
stop() { trap - INT TERM EXIT; kill -TERM "$HONCHO_PID" 2>/dev/null || true; wait "$HONCHO_PID" 2>/dev/null || true; }
trap stop INT TERM EXIT

for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    kill -0 "$HONCHO_PID" 2>/dev/null || { echo "the Procfile stopped; see the output above" >&2; exit 1; }
    sleep 0.5
done

echo "== ingesting the demo corpus through the Celery worker"
python manage.py sync_source demo --wait

cat <<MSG

ragsite is running.
  API          http://127.0.0.1:$PORT/api/v1/   (OpenAPI: http://127.0.0.1:$PORT/api/schema/)
  admin        http://127.0.0.1:$PORT/admin/    (user admin; its password was printed above on first run)
  readiness    http://127.0.0.1:$PORT/readyz    metrics: http://127.0.0.1:$PORT/metrics
  Flower       http://127.0.0.1:5555/          (credentials in var/flower_auth)

Try a search:
  TOKEN=\$(.venv/bin/python manage.py create_token admin)
  curl -s -X POST http://127.0.0.1:$PORT/api/v1/search/ -H "Authorization: Token \$TOKEN" \\
       -H 'Content-Type: application/json' -d '{"query": "How do I connect to the VPN from home?", "top_k": 3}'

Ctrl-C stops everything started here.
MSG
wait "$HONCHO_PID"
