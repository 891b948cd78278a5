"""Logged-in sessions for tests that reach the application without the test client (websockets, a browser)."""

from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore


def session_key_for(email: str) -> str:
    """A stored session of the user ``email`` in the current schema; its key is the session cookie's value."""
    user = get_user_model().objects.get(username=email)
    session = SessionStore()
    session["_auth_user_id"] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.create()
    return session.session_key


def live_communicator(host: str, session_key: str | None = None) -> WebsocketCommunicator:
    """A websocket client of /ws/live/ on ``host``, logged in with ``session_key`` when given."""
    from config.asgi import application

    headers = [(b"host", host.encode())]
    if session_key:
        headers.append((b"cookie", f"sessionid={session_key}".encode()))
    return WebsocketCommunicator(application, "/ws/live/", headers=headers)
