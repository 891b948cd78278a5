"""ASGI entry: Django over HTTP, and websockets that learn their operator and user from Host and session."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from billing.api.asgi import single_cdr_fast_path  # noqa: E402
from core.consumers import LiveConsumer  # noqa: E402
from core.websocket import TenantSessionMiddleware  # noqa: E402
from sms.api.asgi import sms_send_fast_path  # noqa: E402
from sms.middleware import job_upload_size_guard  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Single-CDR posts take billing's group-commit path (billing/api/asgi.py); everything else is Django's.
        # SMS sends with an API key take sms's lean path (sms/api/asgi.py).
        "http": job_upload_size_guard(sms_send_fast_path(single_cdr_fast_path(django_asgi_app))),
        "websocket": TenantSessionMiddleware(URLRouter([path("ws/live/", LiveConsumer.as_asgi())])),
    }
)
