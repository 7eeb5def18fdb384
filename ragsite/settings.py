"""ragsite settings, read from the environment through one typed reader (django-environ).

Defaults run on one machine (SQLite in WAL mode and the embedded index under DATA_DIR, Redis on localhost).
Production (RAGSITE_PROFILE=production) has no default for any secret and turns on the transport protections
that `manage.py check --deploy` asks for.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

PROFILE = env.str("RAGSITE_PROFILE", default="local")
if PROFILE not in ("local", "production"):
    raise ImproperlyConfigured(f"RAGSITE_PROFILE must be 'local' or 'production', not {PROFILE!r}")
PRODUCTION = PROFILE == "production"

DEBUG = env.bool("DEBUG", default=False)
DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / "var"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _secret(name):
    """A secret from NAME or from the file named by NAME_FILE (the container-secrets convention)."""
    if env.str(f"{name}_FILE", default=""):
        return Path(env.str(f"{name}_FILE")).read_text().strip()
    return env.str(name, default="")


SECRET_KEY = _secret("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when RAGSITE_PROFILE=production")
    # One machine: a random key made once and kept under DATA_DIR, never a key written in the code.
    from django.core.management.utils import get_random_secret_key

    _key_file = DATA_DIR / "secret_key"
    if not _key_file.exists():
        _key_file.write_text(get_random_secret_key())
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_celery_beat",
    "django_prometheus",
    "guardian",
    "social_django",
    "apps.accounts",
    "apps.compliance",
    "apps.ingestion",
    "apps.retrieval",
    "apps.monitoring",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "ragsite.urls"
WSGI_APPLICATION = "ragsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under DATA_DIR by default, anything django-environ understands in DATABASE_URL.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'ragsite.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # IMMEDIATE takes the write lock at BEGIN, so two writers never read the same audit-chain head.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
        }
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Transport security: on in production, off on one machine where the API is plain http on localhost.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# REST API
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "ragsite.api_errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "apps.accounts.throttling.UserScopedThrottle",
        "apps.accounts.throttling.TokenScopedThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "search": env.str("SEARCH_THROTTLE_RATE", default="600/min"),  # per user
        "search_token": env.str("SEARCH_TOKEN_THROTTLE_RATE", default="300/min"),  # per API token
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ragsite API",
    "DESCRIPTION": "Permission-aware retrieval over a company's own documents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Cache: shared by every process (rate limits must count across gunicorn workers); Redis on one machine.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("CACHE_URL", default="redis://127.0.0.1:6379/1"),
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="ragsite"),
        "TIMEOUT": 300,
    }
}

# Celery (read by ragsite/celery.py with the CELERY_ namespace)
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=3600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3900)
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
# A task's name prefix is its queue: "ingestion.sync_source" runs on the ingestion queue.
CELERY_TASK_ROUTES = {
    f"{queue}.*": {"queue": queue} for queue in ("ingestion", "embedding", "compliance", "maintenance")
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# With acks_late a task that outlives the visibility timeout is redelivered; keep it above the hard limit.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Installed into the database scheduler at beat start; editable in the admin like any periodic task.
CELERY_BEAT_SCHEDULE = {
    "reap stale syncs": {"task": "maintenance.reap_stale_syncs", "schedule": 60.0},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True

# Retrieval
VECTOR_BACKEND = env.str("VECTOR_BACKEND", default="embedded")
if VECTOR_BACKEND not in ("embedded", "weaviate"):
    raise ImproperlyConfigured(f"VECTOR_BACKEND must be 'embedded' or 'weaviate', not {VECTOR_BACKEND!r}")
WEAVIATE_URL = env.str("WEAVIATE_URL", default="")  # http://host:8080 (https also puts gRPC on TLS)
WEAVIATE_GRPC_PORT = env.int("WEAVIATE_GRPC_PORT", default=50051)
WEAVIATE_API_KEY = _secret("WEAVIATE_API_KEY")
WEAVIATE_COLLECTION = env.str("WEAVIATE_COLLECTION", default="RagsiteChunk")
WEAVIATE_TENANT = env.str("WEAVIATE_TENANT", default="")  # one tenant per organisation when set
WEAVIATE_TIMEOUT = env.float("WEAVIATE_TIMEOUT", default=3.0)  # seconds, connect and each query (hard deadline)
WEAVIATE_INSERT_TIMEOUT = env.float("WEAVIATE_INSERT_TIMEOUT", default=30.0)
EMBEDDING_MODEL = env.str("EMBEDDING_MODEL", default="")  # empty: the bundled all-MiniLM-L6-v2
EMBEDDING_BATCH_SIZE = env.int("EMBEDDING_BATCH_SIZE", default=64)
# Chunks a sync gathers before embedding them in one call: the model sorts a call's texts by length before cutting
# it into batches, so a larger call wastes less on padding (measured: 64 -> 512 took 1000 passages from 31 s to
# about the raw encode's time). Also the most chunks a sync holds in memory unwritten.
EMBEDDING_FLUSH_CHUNKS = env.int("EMBEDDING_FLUSH_CHUNKS", default=512)
CHUNK_TOKENS = env.int("CHUNK_TOKENS", default=200)
CHUNK_OVERLAP_TOKENS = env.int("CHUNK_OVERLAP_TOKENS", default=40)
MAX_DOCUMENT_BYTES = env.int("MAX_DOCUMENT_BYTES", default=20 * 1024 * 1024)
# A running sync whose heartbeat is older than this is declared lost (its worker died) and started again.
SYNC_STALE_SECONDS = env.int("SYNC_STALE_SECONDS", default=600)
SEARCH_MAX_TOP_K = 100
# Weight of the dense side in hybrid search (1 = dense only). See README "Search quality" for how it was chosen.
SEARCH_HYBRID_ALPHA = env.float("SEARCH_HYBRID_ALPHA", default=0.75)
SEARCH_MAX_QUERY_CHARS = 2000
# How often a web process checks the database's index log for chunks written by workers.
INDEX_REFRESH_SECONDS = env.float("INDEX_REFRESH_SECONDS", default=1.0)
# Optional generator for POST answer/ behind an OpenAI-compatible endpoint ({url}/chat/completions); empty = off.
ANSWER_LLM_URL = env.str("ANSWER_LLM_URL", default="")
ANSWER_LLM_MODEL = env.str("ANSWER_LLM_MODEL", default="")
ANSWER_LLM_API_KEY = _secret("ANSWER_LLM_API_KEY")  # sent as a Bearer token; never logged
ANSWER_LLM_TIMEOUT = env.float("ANSWER_LLM_TIMEOUT", default=30.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
