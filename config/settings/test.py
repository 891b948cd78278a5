"""pytest: embedded services unless DATABASE_URL is set; fast hashing; mail kept in memory."""

from .base import *  # noqa: F403
from .base import env

SECRET_KEY = "test-only-not-secret"
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
PLATFORM_SCHEME = "http"
PLATFORM_PORT = env("PLATFORM_PORT", ":8000")
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(exist_ok=True)  # noqa: F405 (WhiteNoise warns when it is missing)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Per test database, so parallel runs (OC_TEST_DB) never share throttle counters.
CACHES["default"]["KEY_PREFIX"] = "test:" + env("OC_TEST_DB", "opencarrier")  # noqa: F405
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = "oc:test:ws"  # noqa: F405
# A broker database of their own, so a `make run` worker on the same embedded Redis never takes test tasks;
# tests read task results back (the platform itself does not keep them).
# OC_TEST_DB lets several test runs share the embedded servers side by side (each its own database and broker).
_TEST_REDIS_DB = env("OC_TEST_REDIS_DB", "9")
CELERY_BROKER_URL = (  # noqa: F405
    CELERY_BROKER_URL + ("&" if "?" in CELERY_BROKER_URL else "?") + f"virtual_host={_TEST_REDIS_DB}"  # noqa: F405
)
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
DATABASES["default"].setdefault("TEST", {})["NAME"] = "test_" + env("OC_TEST_DB", "opencarrier")  # noqa: F405
SMS_CALLBACK_ALLOW_PRIVATE = True  # callback receivers of development and tests listen on 127.0.0.1
