"""Settings shared by every environment; values come from the environment (see README)."""

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from config import embedded

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    return env(name, str(default)).lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict:
    """A Django DATABASES entry (django-tenants backend) from postgres://user:pw@host:port/name?host=/socket."""
    parts = urlparse(url)
    query = parse_qs(parts.query)
    return {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.get("host", [parts.hostname or ""])[0],
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": int(env("DB_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
    }


def required(name: str) -> str:
    value = env(name)
    if not value:
        raise RuntimeError(f"{name} must be set")
    return value


# Embedded PostgreSQL/Redis stand in for unset URLs everywhere but in production.
EMBEDDED_ALLOWED = not env("DJANGO_SETTINGS_MODULE", "").endswith(".production")
DATABASE_URL = env("DATABASE_URL") or (embedded.database_url() if EMBEDDED_ALLOWED else required("DATABASE_URL"))
REDIS_URL = env("REDIS_URL") or (embedded.redis_url() if EMBEDDED_ALLOWED else required("REDIS_URL"))

SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = False
# Any host may reach the app: the tenant middleware answers 404 for hosts that are no
# operator's domain, which is the real host check in a platform with customer domains.
ALLOWED_HOSTS = ["*"]

# The platform console's domain; operators live on their own domains.
PLATFORM_DOMAIN = env("PLATFORM_DOMAIN", "localhost")
PLATFORM_PORT = env("PLATFORM_PORT", "")  # shown in URLs we print and email (":8000" in development)
PLATFORM_SCHEME = env("PLATFORM_SCHEME", "https")

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "core",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_filters",
    "django_celery_beat",
    "channels",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "django_celery_beat",
    "core",
    "billing",
    "sms",
    "mvno",
    "pbx",
]
INSTALLED_APPS = list(SHARED_APPS) + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Operator"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"
# New operators are cloned from this schema instead of running every migration (tenants.services).
TENANT_BASE_SCHEMA = "template_operator"
TENANT_CREATION_FAKES_MIGRATIONS = True
# `SET search_path` once per schema switch, not before every query (a round trip each). Safe with the installed
# django-tenants: it forgets the setting on ROLLBACK and ROLLBACK TO SAVEPOINT, which revert a SET in PostgreSQL.
TENANT_LIMIT_SET_CALLS = True
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]

DATABASES = {"default": database_from_url(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MIDDLEWARE = [
    "core.tenancy.OperatorHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "sms.middleware.JobUploadSizeMiddleware",  # before CSRF, which reads the whole upload of a session's POST
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls_tenant"
PUBLIC_SCHEMA_URLCONF = "config.urls_public"
ASGI_APPLICATION = "config.asgi.application"

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
                "core.context_processors.branding",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "panel:login"
LOGIN_REDIRECT_URL = "panel:dashboard"
LOGOUT_REDIRECT_URL = "panel:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(BASE_DIR / "var" / "media")))
MEDIA_URL = "/media/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_FUNCTION": "django_tenants.cache.make_key",
        "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
    }
}

EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "no-reply@opencarrier.localhost")

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["core.api.throttling.PerKeyThrottle"],
    "DEFAULT_THROTTLE_RATES": {"per_key": env("API_THROTTLE_RATE", "6000/min")},
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "OpenCarrier API",
    "DESCRIPTION": "Operator, partner and platform API. Authenticate with `Authorization: Api-Key <key>`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "Authorization"}}
    },
    "SECURITY": [{"ApiKeyAuth": []}],
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL") or REDIS_URL.replace("unix://", "redis+socket://", 1)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES_NAMES = ["default", "rating", "sms", "callcontrol", "reports"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Celery's Django fix-up closes the task's database connection before and after every task unless this is set
# (then every 2 × this many tasks): a new PostgreSQL backend per task cost the callback worker more than the POSTs.
# A connection found unusable is still replaced (Django's CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = int(env("CELERY_DB_REUSE_MAX", "500"))
CELERY_BEAT_SCHEDULER = "tenant_schemas_celery.db_scheduler:TenantAwareDatabaseScheduler"
# Periodic tasks in code. An entry without "tenant_schemas" is sent by beat to every operator's schema (the
# scheduler's "all tenants" entries); OperatorTask skips suspended operators.
CELERY_BEAT_SCHEDULE = {
    # Reservations nobody committed in time (a lost call-control session, a crashed worker) release their credit.
    "billing-reservations-expire": {
        "task": "billing.reservations_expire",
        "schedule": float(env("BILLING_RESERVATIONS_EXPIRE_EVERY_S", "60")),
        "options": {"queue": "default", "expire_seconds": 50},  # a sweep not run within 50 s is dropped
    },
}

# --- Channels -------------------------------------------------------------------------------
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL}], "prefix": "oc:ws"},
    }
}

# --- Network safety ------------------------------------------------------------------------
# Proxies (load balancers, ingress) allowed to tell the client's address in X-Forwarded-For: networks, comma-separated
# (e.g. "10.0.0.0/8,192.168.1.10"). Empty: the direct peer is the client and X-Forwarded-For is ignored. Read by
# core.net.client_ip (IP allow-lists of API clients).
TRUSTED_PROXIES = [n.strip() for n in (env("TRUSTED_PROXIES") or "").split(",") if n.strip()]
# Delivery-report callbacks (sms.services.callbacks) may reach loopback, private, link-local, multicast and reserved
# addresses only when this is on: off in production, so a client's callback URL cannot probe the platform's own
# network (SSRF). local.py and test.py turn it on (their callback receivers listen on 127.0.0.1).
SMS_CALLBACK_ALLOW_PRIVATE = env_bool("SMS_CALLBACK_ALLOW_PRIVATE", False)
# A concatenated MO message whose parts do not all arrive within this many seconds is stored as what arrived,
# marked incomplete (sms.services.incoming).
SMS_MO_REASSEMBLY_S = int(env("SMS_MO_REASSEMBLY_S", "600"))
# New messages wait this long before a submission drain starts, so it claims a batch (sms.services.wakeups): more
# delay before the first submit_sm, less CPU per message.
SMS_SUBMIT_LINGER_S = float(env("SMS_SUBMIT_LINGER_S", "0.02"))

# --- Money ----------------------------------------------------------------------------------
# Ledger entries and CDR prices keep full precision (6 decimals); statements, invoices and reports round
# each line once, half-up, to this many decimal places: a line is the exact sum of its records rounded once
# (5 SMS of 0.005 → 0.025 → 0.03, not 5 × 0.01), and totals are rounded from exact sums, never added up from
# rounded lines (billing/selectors/reports.py).
MONEY_LINE_DECIMAL_PLACES = int(env("MONEY_LINE_DECIMAL_PLACES", "2"))
# Credit grants (billing.services.grants): a busy customer's holds draw from grants of this many uses' worth
# instead of each locking its account row; undrawn credit of a grant idle this long goes back to the account.
BILLING_GRANT_USES = int(env("BILLING_GRANT_USES", "50"))
BILLING_GRANT_IDLE_S = int(env("BILLING_GRANT_IDLE_S", "60"))

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
