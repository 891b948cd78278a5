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
CACHES["default"]["KEY_PREFIX"] = "test"  # noqa: F405
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = "oc:test:ws"  # noqa: F405
# A broker database of their own, so a `make run` worker on the same embedded Redis never takes test tasks;
# tests read task results back (the platform itself does not keep them).
CELERY_BROKER_URL = CELERY_BROKER_URL + ("&" if "?" in CELERY_BROKER_URL else "?") + "virtual_host=9"  # noqa: F405
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
