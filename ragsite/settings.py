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
    "axes",
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
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out sign-in into the 429 page
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
# Persistent connections, SQLite's too: opening one costs ~0.7 ms of every request on SQLite (its PRAGMAs and
# Django's SQL functions), more on a server. A broken or outlived connection is replaced at a request's start.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in. Password sign-in (admin, API session, LDAP) is guarded against brute force by django-axes (first
# backend); single sign-on lives under /auth/ (social-auth) and each protocol switches on when it is configured.
AUTHENTICATION_BACKENDS = [
    "apps.accounts.backends.SignInThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AXES_FAILURE_LIMIT = env.int("SIGNIN_FAILURE_LIMIT", default=5)  # failed attempts before a lock-out
AXES_COOLOFF_TIME = env.float("SIGNIN_LOCKOUT_HOURS", default=0.25)  # hours a lock-out lasts
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]  # per account and address: no one can lock out others
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "apps.accounts.views.locked_out"
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]  # behind a proxy, set SECURE_PROXY_SSL_HEADER's peer here
AXES_VERBOSE = False

# >>> AUDIT (apps/compliance/audit.py, checkpoints.py; README "Audit log")
def _local_secret(name, filename, make):
    """NAME / NAME_FILE; locally, a secret made once into DATA_DIR/filename; in production, no default. The file
    is linked into place whole, so processes starting together (the Procfile's) agree on one key."""
    import os

    value = _secret(name)
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set when RAGSITE_PROFILE=production")
    path = DATA_DIR / filename
    if not path.exists():
        staged = path.with_name(f".{filename}.{os.getpid()}")
        staged.write_text(make())
        staged.chmod(0o600)
        try:
            os.link(staged, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            staged.unlink()
    return path.read_text().strip()


def _new_ed25519_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


# The audit chain's HMAC key: outside the database, so a database writer cannot recompute the chain.
AUDIT_HMAC_KEY = _local_secret("AUDIT_HMAC_KEY", "audit_hmac_key", lambda: __import__("secrets").token_hex(32))
# Ed25519 private key (PEM) that signs the checkpoints (tree heads) written outside the database.
AUDIT_SIGNING_KEY = _local_secret("AUDIT_SIGNING_KEY", "audit_signing_key.pem", _new_ed25519_pem)
AUDIT_CHECKPOINT_DIR = Path(env.str("AUDIT_CHECKPOINT_DIR", default=str(DATA_DIR / "audit-checkpoints")))
AUDIT_CHECKPOINT_URL = env.str("AUDIT_CHECKPOINT_URL", default="")  # optional HTTP sink, POSTed each checkpoint
AUDIT_CHECKPOINT_TIMEOUT = env.float("AUDIT_CHECKPOINT_TIMEOUT", default=5.0)
AUDIT_CHECKPOINT_SECONDS = env.float("AUDIT_CHECKPOINT_SECONDS", default=3600.0)  # beat: maintenance.audit_checkpoint
AUDIT_MAX_DATA_BYTES = env.int("AUDIT_MAX_DATA_BYTES", default=8192)  # larger values stored as digest and size
# Failed token authentications per client address (REMOTE_ADDR): past it 429 and aggregated audit rows.
AUTH_FAILURE_THROTTLE_RATE = env.str("AUTH_FAILURE_THROTTLE_RATE", default="20/min")
# <<< AUDIT

# IdP group name -> local group (a role or an access group); see apps/accounts/sso/groups.py.
SSO_GROUP_MAP = env.json("SSO_GROUP_MAP", default={})
LOGIN_REDIRECT_URL = env.str("LOGIN_REDIRECT_URL", default="/admin/")
SOCIAL_AUTH_URL_NAMESPACE = "social"
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_LOGIN_ERROR_URL = "/auth/error/"
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "social_core.pipeline.social_auth.social_user",
    "social_core.pipeline.user.get_username",
    "social_core.pipeline.user.create_user",
    "social_core.pipeline.social_auth.associate_user",
    "social_core.pipeline.social_auth.load_extra_data",
    "social_core.pipeline.user.user_details",
    "apps.accounts.sso.pipeline.sync_idp_groups",
)

# >>> SAML (apps/accounts/sso/saml.py)
SAML_GROUPS_ATTRIBUTE = env.str("SAML_GROUPS_ATTRIBUTE", default="groups")
# Certificates and the SP key: inline PEM (or base64 body) in NAME, or a file named by NAME_FILE.
SAML_SP_ENTITY_ID = env.str("SAML_SP_ENTITY_ID", default="")  # default: this site's /auth/saml/metadata/ URL
SAML_SP_CERT = _secret("SAML_SP_CERT")
SAML_SP_KEY = _secret("SAML_SP_KEY")
SAML_IDP_NAME = env.str("SAML_IDP_NAME", default="idp")  # the slug in /auth/saml/login/?idp=...
SAML_IDP_ENTITY_ID = env.str("SAML_IDP_ENTITY_ID", default="")
SAML_IDP_SSO_URL = env.str("SAML_IDP_SSO_URL", default="")
SAML_IDP_CERT = _secret("SAML_IDP_CERT")
SAML_USERNAME_ATTRIBUTE = env.str("SAML_USERNAME_ATTRIBUTE", default="uid")  # also the permanent user id
SAML_EMAIL_ATTRIBUTE = env.str("SAML_EMAIL_ATTRIBUTE", default="mail")
SAML_WANT_RESPONSE_SIGNED = env.bool("SAML_WANT_RESPONSE_SIGNED", default=False)  # assertions are always required
SAML_ALLOW_IDP_INITIATED = env.bool("SAML_ALLOW_IDP_INITIATED", default=False)
if SAML_IDP_SSO_URL:
    if not SAML_IDP_ENTITY_ID or not SAML_IDP_CERT:
        raise ImproperlyConfigured("SAML_IDP_SSO_URL is set: SAML_IDP_ENTITY_ID and SAML_IDP_CERT (or _FILE) are "
                                   "needed")
    if not SAML_IDP_NAME or not SAML_IDP_NAME.replace("-", "").replace("_", "").isalnum():
        raise ImproperlyConfigured("SAML_IDP_NAME must be a slug (letters, digits, - and _)")
    AUTHENTICATION_BACKENDS.append("apps.accounts.sso.saml.SamlAuth")
# <<< SAML

# >>> OIDC (apps/accounts/sso/oidc.py)
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups")
# The issuer URL, without /.well-known/openid-configuration (endpoints and keys come from discovery).
OIDC_ENDPOINT = env.str("OIDC_ENDPOINT", default="") or env.str("OIDC_ISSUER", default="")
if OIDC_ENDPOINT:
    SOCIAL_AUTH_OIDC_OIDC_ENDPOINT = OIDC_ENDPOINT.rstrip("/")
    SOCIAL_AUTH_OIDC_KEY = env.str("OIDC_CLIENT_ID", default="")
    SOCIAL_AUTH_OIDC_SECRET = _secret("OIDC_CLIENT_SECRET")
    if not SOCIAL_AUTH_OIDC_KEY or not SOCIAL_AUTH_OIDC_SECRET:
        raise ImproperlyConfigured("OIDC_ENDPOINT is set: OIDC_CLIENT_ID and OIDC_CLIENT_SECRET (or _FILE) are needed")
    SOCIAL_AUTH_OIDC_SCOPE = env.list("OIDC_SCOPES", default=["openid", "profile", "email"])  # the whole list
    SOCIAL_AUTH_OIDC_REQUESTS_TIMEOUT = env.float("OIDC_TIMEOUT", default=10.0)  # seconds, each call to the IdP
    AUTHENTICATION_BACKENDS.append("apps.accounts.sso.oidc.OidcAuth")
# Any social-auth refusal (SAML's too): a 4xx page and an auth.sso_refused audit event instead of a 500.
MIDDLEWARE.append("apps.accounts.sso.middleware.SsoRefusalMiddleware")
# <<< OIDC

# >>> LDAP (apps/accounts/sso/ldap.py)
# Password sign-in against LDAP / Active Directory (django-auth-ldap): on when LDAP_SERVER_URI is set. The backend
# comes after the brute-force guard, so a directory account is locked out like a local one.
LDAP_SERVER_URI = env.str("LDAP_SERVER_URI", default="")  # ldap://dc1.corp:389 ldaps://... (space-separated list)
if LDAP_SERVER_URI:
    import ldap as _ldap
    from django_auth_ldap import config as _ldap_config

    AUTH_LDAP_SERVER_URI = LDAP_SERVER_URI
    AUTH_LDAP_BIND_DN = env.str("LDAP_BIND_DN", default="")  # a read-only service account; empty: anonymous
    AUTH_LDAP_BIND_PASSWORD = _secret("LDAP_BIND_PASSWORD")
    # Active Directory: LDAP_USER_FILTER="(sAMAccountName=%(user)s)" (or "(userPrincipalName=%(user)s)").
    AUTH_LDAP_USER_SEARCH = _ldap_config.LDAPSearch(
        env.str("LDAP_USER_SEARCH_BASE"), _ldap.SCOPE_SUBTREE, env.str("LDAP_USER_FILTER", default="(uid=%(user)s)")
    )
    AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
    # groupOfNames (OpenLDAP), groupOfUniqueNames, posixGroup, active_directory, nested_active_directory
    LDAP_GROUP_TYPE = env.str("LDAP_GROUP_TYPE", default="groupOfNames")
    _group_types = {
        "groupOfNames": (_ldap_config.GroupOfNamesType, "(objectClass=groupOfNames)"),
        "groupOfUniqueNames": (_ldap_config.GroupOfUniqueNamesType, "(objectClass=groupOfUniqueNames)"),
        "posixGroup": (_ldap_config.PosixGroupType, "(objectClass=posixGroup)"),
        "active_directory": (_ldap_config.ActiveDirectoryGroupType, "(objectClass=group)"),
        "nested_active_directory": (_ldap_config.NestedActiveDirectoryGroupType, "(objectClass=group)"),
    }
    if LDAP_GROUP_TYPE not in _group_types:
        raise ImproperlyConfigured(f"LDAP_GROUP_TYPE must be one of {', '.join(_group_types)}, not {LDAP_GROUP_TYPE!r}")
    LDAP_GROUP_SEARCH_BASE = env.str("LDAP_GROUP_SEARCH_BASE", default="")  # empty: groups are not read
    if LDAP_GROUP_SEARCH_BASE:
        _group_type, _group_filter = _group_types[LDAP_GROUP_TYPE]
        AUTH_LDAP_GROUP_TYPE = _group_type(name_attr="cn")
        AUTH_LDAP_GROUP_SEARCH = _ldap_config.LDAPSearch(
            LDAP_GROUP_SEARCH_BASE, _ldap.SCOPE_SUBTREE, env.str("LDAP_GROUP_FILTER", default=_group_filter)
        )
        if env.str("LDAP_STAFF_GROUP", default=""):  # the DN of a group whose members may use the admin
            AUTH_LDAP_USER_FLAGS_BY_GROUP = {"is_staff": env.str("LDAP_STAFF_GROUP")}
    AUTH_LDAP_START_TLS = env.bool("LDAP_START_TLS", default=False)
    _ldap_timeout = env.float("LDAP_TIMEOUT", default=5.0)  # seconds: connecting, and each operation
    AUTH_LDAP_CONNECTION_OPTIONS = {
        _ldap.OPT_NETWORK_TIMEOUT: _ldap_timeout,
        _ldap.OPT_TIMEOUT: _ldap_timeout,
        _ldap.OPT_REFERRALS: 0,  # Active Directory: never chase referrals (anonymously) to other domains
    }
    if env.str("LDAP_CA_FILE", default=""):  # a private CA for ldaps:// or StartTLS
        AUTH_LDAP_GLOBAL_OPTIONS = {_ldap.OPT_X_TLS_CACERTFILE: env.str("LDAP_CA_FILE")}
    AUTH_LDAP_CACHE_TIMEOUT = 0  # group changes take effect at the next sign-in
    AUTHENTICATION_BACKENDS.append("apps.accounts.sso.ldap.DirectoryBackend")
# <<< LDAP

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
        "apps.accounts.authentication.SessionIdentityAuthentication",
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
    # Bodies are JSON, bounded in depth, free of NUL and objects at the top (ragsite/parsers.py): bad input is a
    # 400. No form parsers: a form's values skipped those checks (a NUL in a multipart "reason" was a 500), and a
    # form cannot carry the nested objects and booleans the API takes; any other media type is a 415.
    "DEFAULT_PARSER_CLASSES": ["ragsite.parsers.BoundedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.accounts.throttling.ScopedThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "search": env.str("SEARCH_THROTTLE_RATE", default="600/min"),  # per user
        "search_token": env.str("SEARCH_TOKEN_THROTTLE_RATE", default="300/min"),  # per API token
    },
}
# A NUL in the query string is a 400 before any view runs (ragsite/middleware.py), as one in a body is.
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.common.CommonMiddleware"), "ragsite.middleware.RefuseNulInQuery")
# Deepest nesting a JSON request body may have (sources' configs are a few levels deep); past it, a 400.
API_JSON_MAX_DEPTH = env.int("API_JSON_MAX_DEPTH", default=32)
SPECTACULAR_SETTINGS = {
    "TITLE": "ragsite API",
    "DESCRIPTION": "Permission-aware retrieval over a company's own documents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}
# >>> API SCHEMA (ragsite/api_schema.py, ragsite/pagination.py; checked by tests/test_api_schema.py)
# Error responses documented on every operation; request components split from response ones, so required strings
# say minLength 1; limit/offset refused with a 400 when out of bounds instead of silently replaced.
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "ragsite.api_schema.AutoSchema"
REST_FRAMEWORK["DEFAULT_PAGINATION_CLASS"] = "ragsite.pagination.StrictLimitOffsetPagination"
SPECTACULAR_SETTINGS["COMPONENT_SPLIT_REQUEST"] = True
# <<< API SCHEMA

# Cache: shared by every process (rate limits must count across gunicorn workers); Redis on one machine.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("CACHE_URL", default="redis://127.0.0.1:6379/1"),
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="ragsite"),
        "TIMEOUT": 300,
        # The rate limits live here: a Redis that is down or silent answers 503 within these seconds, never hangs.
        "OPTIONS": {"socket_connect_timeout": env.float("CACHE_TIMEOUT", default=2.0),
                    "socket_timeout": env.float("CACHE_TIMEOUT", default=2.0)},
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
    "compact the index outbox": {"task": "maintenance.compact_index_outbox", "schedule": 6 * 3600.0},
    "write an audit checkpoint": {"task": "maintenance.audit_checkpoint", "schedule": AUDIT_CHECKPOINT_SECONDS},
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
# A sync stages its chunk texts in batches of this many and queues each as `embedding.embed_batch` on the
# `embedding` queue; at most EMBEDDING_MAX_IN_FLIGHT batches per source are outstanding. A sync that would wait
# embeds its own unclaimed batches (merged into calls of up to EMBEDDING_FLUSH_CHUNKS), so it never waits for a
# free process. A claim older than EMBEDDING_CLAIM_SECONDS is presumed dead and may be taken over.
EMBEDDING_BATCH_CHUNKS = env.int("EMBEDDING_BATCH_CHUNKS", default=64)
EMBEDDING_MAX_IN_FLIGHT = env.int("EMBEDDING_MAX_IN_FLIGHT", default=8)
EMBEDDING_CLAIM_SECONDS = env.int("EMBEDDING_CLAIM_SECONDS", default=120)
CHUNK_TOKENS = env.int("CHUNK_TOKENS", default=200)
CHUNK_OVERLAP_TOKENS = env.int("CHUNK_OVERLAP_TOKENS", default=40)
MAX_DOCUMENT_BYTES = env.int("MAX_DOCUMENT_BYTES", default=20 * 1024 * 1024)
# Where sources may reach (README "Roles"): file-system sources only inside these directories (resolved, symlinks
# and .. included); the http, sharepoint, confluence, sql and s3 connectors never to loopback, link-local or private
# addresses unless allowed here (comma-separated CIDRs or host names, e.g. "10.20.0.0/16,wiki.corp.example").
# Checked on save and on every sync.
FILESYSTEM_SOURCE_ROOTS = [
    Path(p).expanduser().resolve()
    for p in env.list("FILESYSTEM_SOURCE_ROOTS", default=[str(DATA_DIR / "sources"), str(BASE_DIR / "demo")])
]
CONNECTOR_EGRESS_ALLOW = env.list("CONNECTOR_EGRESS_ALLOW", default=[])
# A running sync whose heartbeat is older than this is declared lost (its worker died) and started again.
SYNC_STALE_SECONDS = env.int("SYNC_STALE_SECONDS", default=600)
# Prune guard: a run that would delete more than this fraction of a source's documents, and more than
# SYNC_PRUNE_MIN_DOCUMENTS of them, deletes nothing unless it was confirmed (sync_source --allow-mass-delete, or
# "allow_mass_delete": true on POST sources/{id}/sync/): an emptied folder is more often an unmounted share.
SYNC_PRUNE_MAX_FRACTION = env.float("SYNC_PRUNE_MAX_FRACTION", default=0.5)
SYNC_PRUNE_MIN_DOCUMENTS = env.int("SYNC_PRUNE_MIN_DOCUMENTS", default=10)
# A running sync whose heartbeat is older than this (6 heartbeats) is not joined by a new request: it is failed as
# lost and a new run starts; cancelling it takes effect at once. Raise it where one document can take longer.
SYNC_LOST_SECONDS = env.int("SYNC_LOST_SECONDS", default=30)
SEARCH_MAX_TOP_K = 100
# Weight of the dense side in hybrid search (1 = dense only). See README "Search quality" for how it was chosen.
SEARCH_HYBRID_ALPHA = env.float("SEARCH_HYBRID_ALPHA", default=0.75)
# Hybrid search's dense-side pseudo-relevance feedback: how many top chunks of a first hybrid ranking move the
# query vector (Rocchio, index/fusion.py); 0 turns it off. See README "Search quality".
SEARCH_HYBRID_PRF_DEPTH = env.int("SEARCH_HYBRID_PRF_DEPTH", default=5)
SEARCH_MAX_QUERY_CHARS = 2000
# The embedded index's approximate (faiss IVF) side: keys enabled, min_rows, min_allowed, min_fraction, nprobe.
# Defaults (apps/retrieval/index/approx.py) were chosen by bench/search.py --recall; see README "Search".
INDEX_APPROX = env.json("INDEX_APPROX", default={})
# How often a web process checks the database's index log for chunks written by workers.
INDEX_REFRESH_SECONDS = env.float("INDEX_REFRESH_SECONDS", default=1.0)
# IndexChange outbox rows older than this, once every external index has applied them, are removed
# (maintenance.compact_index_outbox, every 6 hours; apps/retrieval/outbox.py).
INDEX_OUTBOX_RETENTION_DAYS = env.float("INDEX_OUTBOX_RETENTION_DAYS", default=7.0)
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
