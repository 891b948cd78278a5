"""Laptop / `make run`: embedded services, console email, debug pages."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env("DJANGO_DEBUG", "1") == "1"
SECRET_KEY = env("DJANGO_SECRET_KEY") or "local-development-only-not-secret"
EMAIL_BACKEND = env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
PLATFORM_SCHEME = "http"
PLATFORM_PORT = env("PLATFORM_PORT", ":8000")
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(exist_ok=True)  # noqa: F405 (WhiteNoise warns when it is missing)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
SMS_CALLBACK_ALLOW_PRIVATE = True  # callback receivers of development and tests listen on 127.0.0.1
