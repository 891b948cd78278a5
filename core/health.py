"""GET /healthz: database, Redis and Celery workers; 200 when all are up, 503 naming what is down."""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse


def _database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means down, and the reason is shown
        return str(exc).strip() or exc.__class__.__name__
    return None


def _redis() -> str | None:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
    except Exception as exc:
        return str(exc) or exc.__class__.__name__
    return None


def _celery() -> str | None:
    from config.celery_app import app

    try:
        replies = app.control.ping(timeout=1.0, limit=1)
    except Exception as exc:
        return str(exc) or exc.__class__.__name__
    return None if replies else "no worker answered within 1 s"


CHECKS = {"database": _database, "redis": _redis, "celery": _celery}


def healthz(request):
    results = {}
    for name, check in CHECKS.items():
        if name == "celery" and results["redis"]["status"] == "down" and settings.CELERY_BROKER_URL.startswith("redis"):
            # Asking workers through a dead broker would only hang; they cannot be reached.
            results[name] = {"status": "down", "error": "broker unreachable"}
            continue
        error = check()
        results[name] = {"status": "up"} if error is None else {"status": "down", "error": error}
    down = [name for name, result in results.items() if result["status"] == "down"]
    body = {"status": "ok" if not down else "down", "down": down, "services": results}
    return JsonResponse(body, status=503 if down else 200)
