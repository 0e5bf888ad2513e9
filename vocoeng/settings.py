"""Configure VocoEng from the environment (12-factor).

Every setting reads an environment variable. Embedded defaults make ``make run``
work on a fresh machine with no services and no API keys: SQLite, a Celery broker
on the filesystem, results in the database, the ``echo`` AI provider. Each real
component switches on when its variable is set (see README, "Configuration").
"""

from __future__ import annotations

import json
from pathlib import Path

import environ

from webhooks.bridge.processes import processes_from as _bridge_processes_from

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VOCOENG_VAR_DIR", default=str(BASE_DIR / "var")))

VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()

# --- Core -------------------------------------------------------------------------
# DJANGO_DEV=1 is the development flag: DEBUG defaults on and an insecure key is
# allowed. Without it DEBUG is off and SECRET_KEY has no default (production).
DEV = env.bool("DJANGO_DEV", default=False)
DEBUG = env.bool("DJANGO_DEBUG", default=DEV)
if DEV:
    SECRET_KEY = env.str("SECRET_KEY", default="dev-insecure-only-for-local-use")
else:
    SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"]
)
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
    "drf_spectacular_sidecar",  # Swagger UI / Redoc assets, served locally
    "django_celery_results",
    "django_celery_beat",
    "vocoeng",
    "conversations",
    "pipeline",
    "analytics",
    "webhooks",
]

MIDDLEWARE = [
    # First, so it times and counts every response (vocoeng/metrics.py).
    "vocoeng.metrics.RequestMetricsMiddleware",
    # Next, so every log record of the request carries its correlation id.
    "vocoeng.correlation.CorrelationIdMiddleware",
    # A view that fails because the database or broker is down answers 503.
    "vocoeng.health.DependencyDownMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "vocoeng.urls"
WSGI_APPLICATION = "vocoeng.wsgi.application"
ASGI_APPLICATION = "vocoeng.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------
DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'vocoeng.sqlite3'}"
    )
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A psycopg connection pool per process (Django >= 5.1): opening a
    # PostgreSQL connection forks a server backend (milliseconds of CPU), and
    # without a pool every web request and every task would open one. Threads
    # and greenlets (gunicorn's web workers, the ai worker's 100 threads)
    # borrow a connection for as long as they use it, so max_size bounds the
    # connections a process holds, well under the server's max_connections.
    # (A web process keeps one more, outside the pool, for the webhook
    # hand-off's INSERTs.)
    DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=10)
    # Prepared statements: values bound by the server (not spliced into the
    # SQL text by the client) and psycopg's default of preparing what a
    # connection has run 5 times, which Django turns off for PgBouncer's sake.
    # The hot statements run many times on few pooled connections, and
    # PostgreSQL then no longer parses and plans each run (measured on the
    # reply's claim: 450 -> 85 µs of server CPU, 123 -> 77 µs of client CPU).
    # Behind PgBouncer < 1.21 in transaction mode, set DB_PREPARED_STATEMENTS=0.
    if env.bool("DB_PREPARED_STATEMENTS", default=True):
        DATABASES["default"].setdefault("OPTIONS", {}).update(
            server_side_binding=True, prepare_threshold=5
        )
    if DB_POOL_MAX_SIZE > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool replaces persistence
        # With a pool, health checks ping the server on every checkout (a round
        # trip per request or task); the pool already drops broken connections
        # when they are returned. CONN_HEALTH_CHECKS=1 turns the ping back on.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool(
            "CONN_HEALTH_CHECKS", default=False
        )
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": env.float("DB_POOL_TIMEOUT_SECONDS", default=10.0),
        }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions + a busy timeout: without them Celery chords on SQLite
    # fail with "database is locked" when two workers write at once.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so the Celery worker process started by the tests
    # sees the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-vocoeng.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serve app static files (admin, DRF) without a collectstatic step.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "vocoeng.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "vocoeng.parsers.JSONParser",  # deep nesting is a 400, not a 500
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "vocoeng.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "vocoeng.openapi.AutoSchema",
}

# OpenAPI 3 at /api/schema/ (drf-spectacular); the UIs load their assets from
# drf-spectacular-sidecar's static files, never from a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "VocoEng API",
    "DESCRIPTION": (
        "Conversations, consensus runs and voice-of-customer analytics, plus the "
        "inbound webhooks. Machines send `Authorization: Token <key>` (create one "
        "with `manage.py create_api_key --tenant <slug>`); staff use a session."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "PREPROCESSING_HOOKS": ["vocoeng.openapi.summary_alias_drop"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "vocoeng.openapi.plain_views_add",
    ],
}

# Security headers that matter once DEBUG is off (behind a TLS-terminating proxy).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

# --- Logging ----------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# json: one JSON object per line (production); console: readable lines (make run).
# Both carry the correlation id (vocoeng/logging_setup.py, README "Logs").
LOG_FORMAT = env.str("LOG_FORMAT", default="console" if DEV else "json")
if LOG_FORMAT not in ("json", "console"):
    raise ValueError(f"LOG_FORMAT must be json or console, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "vocoeng.logging_setup.ContextFilter"}},
    "formatters": {
        "console": {"()": "vocoeng.logging_setup.ConsoleFormatter"},
        "json": {"()": "vocoeng.logging_setup.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replace Django's own DEBUG-only console handler: root already prints.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        # Celery's "Task … received" line: one more line per task, logged by
        # the consumer before the task's headers (and correlation id) are read,
        # on the thread that feeds every task to the pool (bench/ai_fanout.py:
        # ~6% of the ai worker's GIL time). The task's own task_started line and
        # Celery's succeeded line remain; INFO brings it back.
        "celery.worker.strategy": {
            "level": env.str("CELERY_RECEIVED_LOG_LEVEL", default="WARNING")
        },
        # httpx logs every request line (with URLs) at INFO.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}

# --- Celery -------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # The transport ignores the host, but kombu warns "No hostname was
    # supplied" on every connection without one.
    CELERY_BROKER_URL = "filesystem://localhost/"
BROKER_DIR = Path(env.str("CELERY_FILESYSTEM_DIR", default=str(VAR_DIR / "broker")))
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="django-db")
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-extended
CELERY_RESULT_EXTENDED = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-serializer
CELERY_TASK_SERIALIZER = "json"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-default-queue
CELERY_TASK_DEFAULT_QUEUE = "default"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-routes
CELERY_TASK_ROUTES = ("vocoeng.queues.route_task",)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_PREFETCH_MULTIPLIER", default=1)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=600)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-soft-time-limit
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=540)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-always-eager
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-hijack-root-logger
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connections before and after every
# task unless this is set, and in a prefork child with a connection pool it
# closes the pool too: a new PostgreSQL connection (a server backend forked)
# per task. With it, the fixup does so every 2 x N signals only, and
# vocoeng.celery hands the task's connection back to the pool after each task
# (a broken one is dropped), as a web request does. Measured on the webhook
# worker (prefork, 2 children): ~30 -> ~75-86 deliveries/s.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-scheduler
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# A worker that dies leaves its unacked tasks with the broker; on Redis they come
# back after visibility_timeout (kombu's default is 1 h). It must stay above the
# longest hard time limit and retry countdown.
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=900)
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queues = BROKER_DIR / "queues"
    # https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.filesystem.html
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queues),
        "data_folder_out": str(_queues),
        "control_folder": str(BROKER_DIR / "control"),
        # kombu's default 1 s poll makes every hop of a chain cost a second.
        "polling_interval": env.float("CELERY_POLLING_INTERVAL", default=0.1),
    }
else:
    if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        # kombu's Redis transport, reusing its Redis client (vocoeng/kombu_redis.py).
        # https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport
        CELERY_BROKER_TRANSPORT = "vocoeng.kombu_redis:Transport"
    # https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        # Restore unacked messages of dead workers promptly once they time out.
        "unacked_restore_interval": env.int(
            "CELERY_UNACKED_RESTORE_SECONDS", default=5
        ),
        # kombu 5.7 scans only on every 10th sweep by default, which made the
        # effective period 10 x the interval (50 s, measured): scan every sweep.
        "unacked_restore_throttle": 1,
    }
    _prefix = env.str("CELERY_REDIS_KEY_PREFIX", default="")
    if _prefix:
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = _prefix

# --- Bus (direct Celery or Google Pub/Sub) -------------------------------------------
BUS = env.str("BUS", default="direct")
PUBSUB_PROJECT_ID = env.str("PUBSUB_PROJECT_ID", default="vocoeng-local")
PUBSUB_EMULATOR_HOST = env.str("PUBSUB_EMULATOR_HOST", default="")
# How long pubsub_setup and the bridge's start-up check wait for an unreachable
# Pub/Sub (an emulator still starting) before they fail with a clear message.
PUBSUB_STARTUP_WAIT_SECONDS = env.float("PUBSUB_STARTUP_WAIT_SECONDS", default=30.0)
# How long one publish waits for Pub/Sub's answer (a web request publishing
# with BUS=pubsub answers 503 after it, within gunicorn's 30 s timeout).
PUBSUB_PUBLISH_TIMEOUT_SECONDS = env.float(
    "PUBSUB_PUBLISH_TIMEOUT_SECONDS", default=10.0
)
PUBSUB_TOPIC_MESSAGES = env.str("PUBSUB_TOPIC_MESSAGES", default="vocoeng-messages")
PUBSUB_TOPIC_RESPONSES = env.str("PUBSUB_TOPIC_RESPONSES", default="vocoeng-responses")
PUBSUB_TOPIC_JOBS = env.str("PUBSUB_TOPIC_JOBS", default="consensus-engine-jobs")
PUBSUB_TOPIC_VOC = env.str("PUBSUB_TOPIC_VOC", default="voc-events")
PUBSUB_TOPIC_DEAD_LETTER = env.str(
    "PUBSUB_TOPIC_DEAD_LETTER", default="vocoeng-dead-letter"
)
# Subscriptions the bridge pulls, one per inbound topic (named after it); the
# subscription a message came on gives its kind when it has no `kind` attribute.
PUBSUB_SUBSCRIPTION_MESSAGES = env.str(
    "PUBSUB_SUBSCRIPTION_MESSAGES", default=f"{PUBSUB_TOPIC_MESSAGES}-bridge"
)
PUBSUB_SUBSCRIPTION_JOBS = env.str(
    "PUBSUB_SUBSCRIPTION_JOBS", default=f"{PUBSUB_TOPIC_JOBS}-bridge"
)
PUBSUB_SUBSCRIPTION_VOC = env.str(
    "PUBSUB_SUBSCRIPTION_VOC", default=f"{PUBSUB_TOPIC_VOC}-bridge"
)
# Keeps what lands on the dead-letter topic (a topic alone drops messages).
PUBSUB_SUBSCRIPTION_DEAD_LETTER = env.str(
    "PUBSUB_SUBSCRIPTION_DEAD_LETTER", default=f"{PUBSUB_TOPIC_DEAD_LETTER}-store"
)
# Seconds the bridge retries an enqueue while the broker is down before it
# nacks the message (each nack counts towards the subscription's 5 attempts).
PUBSUB_BRIDGE_BROKER_RETRY_SECONDS = env.float(
    "PUBSUB_BRIDGE_BROKER_RETRY_SECONDS", default=30.0
)
# Bridge processes `manage.py pubsub_bridge` starts when --processes is not
# given: "auto" = one per usable CPU, at most 4 (webhooks/bridge/processes.py).
PUBSUB_BRIDGE_PROCESSES = _bridge_processes_from(
    env.str("PUBSUB_BRIDGE_PROCESSES", default="auto")
)
# A dedup claim left "pending" longer than this (a bridge that died between
# claim and enqueue) may be taken over by the next delivery.
PUBSUB_BRIDGE_CLAIM_SECONDS = env.int("PUBSUB_BRIDGE_CLAIM_SECONDS", default=120)
# Claims are kept this long, then deleted by celery beat's webhooks.claims_prune:
# longer than the subscriptions keep a message (7 days), so that a redelivery
# or a publisher's retry still finds its claim.
PUBSUB_CLAIM_KEEP_DAYS = env.float("PUBSUB_CLAIM_KEEP_DAYS", default=8.0)
if PUBSUB_CLAIM_KEEP_DAYS <= 0:
    raise ValueError("PUBSUB_CLAIM_KEEP_DAYS must be above 0")
# Where the bridge keeps those claims: "database" (the
# ProcessedMessage table, listed in the admin), "redis" (keys that expire by
# themselves, vocoeng/claims_redis.py), or "auto": Redis when the broker is
# Redis (the claims then share the fate of the chains they guard), else the
# database.
_broker_is_redis = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
PUBSUB_BRIDGE_DEDUP = env.str("PUBSUB_BRIDGE_DEDUP", default="auto")
if PUBSUB_BRIDGE_DEDUP == "auto":
    PUBSUB_BRIDGE_DEDUP = "redis" if _broker_is_redis else "database"
if PUBSUB_BRIDGE_DEDUP not in ("database", "redis"):
    raise ValueError(
        "PUBSUB_BRIDGE_DEDUP must be auto, database or redis, "
        f"not {PUBSUB_BRIDGE_DEDUP!r}"
    )
PUBSUB_BRIDGE_DEDUP_REDIS_URL = env.str(
    "PUBSUB_BRIDGE_DEDUP_REDIS_URL",
    default=CELERY_BROKER_URL if _broker_is_redis else "",
)
if PUBSUB_BRIDGE_DEDUP == "redis" and not PUBSUB_BRIDGE_DEDUP_REDIS_URL:
    raise ValueError(
        "PUBSUB_BRIDGE_DEDUP=redis needs PUBSUB_BRIDGE_DEDUP_REDIS_URL "
        "(or CELERY_BROKER_URL on Redis)"
    )
PUBSUB_BRIDGE_DEDUP_KEY_PREFIX = env.str(
    "PUBSUB_BRIDGE_DEDUP_KEY_PREFIX",
    default=env.str("CELERY_REDIS_KEY_PREFIX", default=""),
)
# kind → dotted path of the function that validates a message and builds its
# Celery signature. Resolved lazily so the bus, the push endpoint and the bridge
# share it without importing the apps.
BUS_ROUTES = {
    "chat_message": "conversations.routes.chat_message",
    "pipeline_job": "pipeline.routes.pipeline_job",
    "voc_event": "analytics.routes.voc_event",
    **env.json("BUS_ROUTES", default={}),
}

# --- Conversations and AI -------------------------------------------------------------
CONVERSATION_STORE = env.str("CONVERSATION_STORE", default="db")
FIRESTORE_PROJECT_ID = env.str("FIRESTORE_PROJECT_ID", default=PUBSUB_PROJECT_ID)
FIRESTORE_EMULATOR_HOST = env.str("FIRESTORE_EMULATOR_HOST", default="")
FIRESTORE_COLLECTION = env.str("FIRESTORE_COLLECTION", default="conversations")

OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
OPENAI_MODEL = env.str("OPENAI_MODEL", default="gpt-4o-mini")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
ANTHROPIC_MODEL = env.str("ANTHROPIC_MODEL", default="claude-3-5-haiku-latest")
# The provider tried first; empty picks the first one with credentials, else echo.
AI_PROVIDER = env.str("AI_PROVIDER", default="")
AI_FALLBACK = env.list("AI_FALLBACK", default=[])
AI_TIMEOUT_SECONDS = env.float("AI_TIMEOUT_SECONDS", default=60.0)
AI_MAX_RETRIES = env.int("AI_MAX_RETRIES", default=3)
AI_RETRY_BACKOFF_SECONDS = env.float("AI_RETRY_BACKOFF_SECONDS", default=0.5)
AI_RETRY_MAX_BACKOFF_SECONDS = env.float("AI_RETRY_MAX_BACKOFF_SECONDS", default=30.0)
AI_MAX_TOKENS = env.int("AI_MAX_TOKENS", default=1024)
AI_TEMPERATURE = env.float("AI_TEMPERATURE", default=0.7)
AI_HISTORY_MESSAGES = env.int("AI_HISTORY_MESSAGES", default=20)
AI_SYSTEM_PROMPT = env.str(
    "AI_SYSTEM_PROMPT",
    default="You are a helpful, concise assistant answering customers on chat.",
)
# Tools the model may call on the default channel (names from conversations.tools
# or admin-configured HTTP tools); empty means plain replies, one model call each.
AI_TOOLS = env.list("AI_TOOLS", default=[])
# Model turns that may ask for tools before one last call that must answer.
AI_MAX_TOOL_ROUNDS = env.int("AI_MAX_TOOL_ROUNDS", default=5)
# Threads of one process that may run a reply's CPU-bound parts at once (its
# database work and the model SDK's own, vocoeng/cpu_slots.py); the others
# wait on their model calls or in line. 0 = no limit.
AI_WORKER_CPU_SLOTS = env.int("AI_WORKER_CPU_SLOTS", default=1)
# USD per million tokens, (input, output), per model. Extend or override with
# AI_PRICES='{"my-model": [0.1, 0.2]}'. Unknown models cost 0 and log a warning.
AI_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "claude-3-5-haiku-latest": (0.80, 4.00),
    "claude-3-5-sonnet-latest": (3.00, 15.00),
    "claude-sonnet-4-0": (3.00, 15.00),
    "echo": (0.0, 0.0),
    **{k: tuple(v) for k, v in json.loads(env.str("AI_PRICES", default="{}")).items()},
}

# --- Channels -----------------------------------------------------------------------
WHATSAPP_VERIFY_TOKEN = env.str("WHATSAPP_VERIFY_TOKEN", default="")
WHATSAPP_APP_SECRET = env.str("WHATSAPP_APP_SECRET", default="")
WHATSAPP_ACCESS_TOKEN = env.str("WHATSAPP_ACCESS_TOKEN", default="")
WHATSAPP_PHONE_NUMBER_ID = env.str("WHATSAPP_PHONE_NUMBER_ID", default="")
WHATSAPP_API_BASE = env.str(
    "WHATSAPP_API_BASE", default="https://graph.facebook.com/v21.0"
)
AISENSY_WEBHOOK_SECRET = env.str("AISENSY_WEBHOOK_SECRET", default="")
AISENSY_API_KEY = env.str("AISENSY_API_KEY", default="")
AISENSY_API_BASE = env.str("AISENSY_API_BASE", default="https://backend.aisensy.com")
# Template sent instead of text outside WhatsApp's 24 h window (error 131047):
# "name" or "name:language" (default language en_US). Empty: record the failure.
WHATSAPP_FALLBACK_TEMPLATE = env.str("WHATSAPP_FALLBACK_TEMPLATE", default="")
WHATSAPP_TIMEOUT_SECONDS = env.float("WHATSAPP_TIMEOUT_SECONDS", default=10.0)
# Messages per sender that may reach the model, e.g. "20/min"; "0" disables.
AI_USER_RATE_LIMIT = env.str("AI_USER_RATE_LIMIT", default="20/min")
# Pub/Sub push: when the audience is set, the OIDC token of each push is
# verified. PUBSUB_PUSH_CERTS_FILE (JSON {kid: PEM cert}) replaces Google's
# published certificates (tests); PUBSUB_PUSH_SERVICE_ACCOUNT pins the sender.
PUBSUB_PUSH_AUDIENCE = env.str("PUBSUB_PUSH_AUDIENCE", default="")
PUBSUB_PUSH_CERTS_FILE = env.str("PUBSUB_PUSH_CERTS_FILE", default="")
PUBSUB_PUSH_SERVICE_ACCOUNT = env.str("PUBSUB_PUSH_SERVICE_ACCOUNT", default="")

# --- Pipeline -----------------------------------------------------------------------
WORKER_STEP_TIMEOUT_SECONDS = env.int("WORKER_STEP_TIMEOUT_SECONDS", default=300)
WORKER_JOB_TIMEOUT_SECONDS = env.int("WORKER_JOB_TIMEOUT_SECONDS", default=1800)
MAX_RETRIES_PER_PERSONA = env.int("MAX_RETRIES_PER_PERSONA", default=3)
RETRY_INITIAL_BACKOFF_SECONDS = env.float("RETRY_INITIAL_BACKOFF_SECONDS", default=1.0)
RETRY_BACKOFF_MULTIPLIER = env.float("RETRY_BACKOFF_MULTIPLIER", default=2.0)
# Personas that review a run when the request names none.
PIPELINE_DEFAULT_PERSONAS = env.list(
    "PIPELINE_DEFAULT_PERSONAS", default=["optimist", "skeptic", "engineer"]
)
# Reviews that must succeed for aggregation; 0 means all but one.
PIPELINE_MIN_REVIEWS = env.int("PIPELINE_MIN_REVIEWS", default=0)
PIPELINE_MAX_PERSONAS = env.int("PIPELINE_MAX_PERSONAS", default=10)
PIPELINE_MAX_IDEA_CHARS = env.int("PIPELINE_MAX_IDEA_CHARS", default=8000)
# Hard limit = step timeout + grace; a running claim older than that is stale.
PIPELINE_STEP_GRACE_SECONDS = env.int("PIPELINE_STEP_GRACE_SECONDS", default=10)
# How soon a task looks again when a step it needs is held by another worker.
PIPELINE_WAIT_SECONDS = env.float("PIPELINE_WAIT_SECONDS", default=0.5)
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html#beat-entries
# (django_celery_beat's DatabaseScheduler loads these static entries too.)
CELERY_BEAT_SCHEDULE = {
    "pipeline-reap": {
        "task": "pipeline.reap",
        "schedule": env.float("PIPELINE_REAPER_INTERVAL_SECONDS", default=30.0),
    },
    "webhooks-sweep": {
        "task": "webhooks.deliveries_sweep",
        "schedule": env.float("WEBHOOK_SWEEP_INTERVAL_SECONDS", default=60.0),
    },
    "bridge-claims-prune": {
        "task": "webhooks.claims_prune",
        "schedule": env.float("PUBSUB_CLAIM_PRUNE_INTERVAL_SECONDS", default=3600.0),
    },
}
# A WhatsApp/AiSensy delivery is recorded by the web and processed by a
# `default` worker task; one still unprocessed this long after it arrived lost
# its task, and the sweep above enqueues it again.
WEBHOOK_SWEEP_AFTER_SECONDS = env.float("WEBHOOK_SWEEP_AFTER_SECONDS", default=120.0)

# --- Analytics ----------------------------------------------------------------------
VOC_BATCH_SIZE = env.int("VOC_BATCH_SIZE", default=500)
VOC_FLUSH_SECONDS = env.float("VOC_FLUSH_SECONDS", default=2.0)
# Most events one POST /api/v1/analytics/events/ may carry.
VOC_MAX_BATCH = env.int("VOC_MAX_BATCH", default=1000)
# Keyword taxonomy for event topics: {"topic": ["keyword", ...]} (JSON).
VOC_TOPICS: dict[str, list[str]] = env.json(
    "VOC_TOPICS",
    default={
        "billing": [
            "bill",
            "billing",
            "invoice",
            "charge",
            "charged",
            "refund",
            "payment",
            "price",
            "subscription",
        ],
        "delivery": [
            "delivery",
            "shipping",
            "shipped",
            "package",
            "tracking",
            "courier",
            "late",
        ],
        "account": ["account", "login", "password", "sign in", "locked", "profile"],
        "technical": ["error", "bug", "crash", "broken", "outage", "slow", "app"],
        "cancellation": ["cancel", "cancellation", "unsubscribe", "close account"],
    },
)
# Set (to a writable, emptied-at-start folder) when gunicorn runs several workers:
# prometheus_client then aggregates the metrics of all processes (README).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# A Celery worker serves its task metrics on this port (0: off); see README
# "Metrics" for prefork workers (vocoeng/celery_metrics.py).
CELERY_METRICS_PORT = env.int("CELERY_METRICS_PORT", default=0)
CELERY_METRICS_ADDR = env.str("CELERY_METRICS_ADDR", default="0.0.0.0")  # noqa: S104
# /metrics reads queue depths from the broker at most this often.
CELERY_METRICS_QUEUE_CACHE_SECONDS = env.float(
    "CELERY_METRICS_QUEUE_CACHE_SECONDS", default=5.0
)

# --- Secrets at rest -----------------------------------------------------------------
# Fernet keys, comma-separated: the first encrypts, all decrypt (rotation). Under
# DJANGO_DEV a key derived from SECRET_KEY is used when unset.
FIELD_ENCRYPTION_KEY = env.list("FIELD_ENCRYPTION_KEY", default=[])
