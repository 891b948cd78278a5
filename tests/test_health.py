"""GET /healthz against the real database, Redis and Celery (a worker subprocess)."""

import pytest

from tests.celery_worker import celery_worker

pytestmark = pytest.mark.django_db


def test_health_names_celery_down_when_no_worker_runs(world, platform_client):
    response = platform_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["celery"]
    assert body["services"]["database"] == {"status": "up"} and body["services"]["redis"] == {"status": "up"}


def test_health_names_redis_down(world, platform_client, settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path}/no-redis-here.sock"
    settings.CELERY_BROKER_URL = f"redis+socket://{tmp_path}/no-redis-here.sock"
    response = platform_client.get("/healthz")
    assert response.status_code == 503
    assert "redis" in response.json()["down"]


def test_health_is_200_when_all_are_up(world, platform_client, demo_client):
    with celery_worker():
        response = platform_client.get("/healthz")
        assert response.status_code == 200, response.content
        assert response.json() == {
            "status": "ok",
            "down": [],
            "services": {"database": {"status": "up"}, "redis": {"status": "up"}, "celery": {"status": "up"}},
        }
        assert demo_client.get("/healthz").status_code == 200
