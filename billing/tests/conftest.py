import pytest

from tests.celery_worker import celery_worker


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    """A real Celery worker on the test database for the module's tests."""
    from config.celery_app import app

    with django_db_blocker.unblock():
        app.control.purge()  # messages other tests enqueued without a worker (their transactions never ran them)
        with celery_worker():
            yield
