"""Websocket scope: operator from the Host header, user from the session cookie, both read in one step.

Resolving schema and session in a single synchronous call matters: the schema is a property of the
thread's database connection, so switching it in one call and reading the session in another could
read another operator's session table.
"""

from http.cookies import SimpleCookie

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.utils.crypto import constant_time_compare

from .selectors import customer_for_user
from .tenancy import resolve_host


def _session_user(session_key: str | None):
    if not session_key:
        return None
    session = SessionStore(session_key)
    user_id = session.get(SESSION_KEY)
    if user_id is None or session.get(BACKEND_SESSION_KEY) is None:
        return None
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None or not constant_time_compare(session.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        return None
    return user


@database_sync_to_async
def resolve_scope(host: str, session_key: str | None) -> dict:
    connection.set_schema_to_public()
    domain, client_label = resolve_host(host)
    if domain is None or client_label or domain.tenant.is_suspended:
        return {"schema_name": None}
    try:
        connection.set_tenant(domain.tenant)
        user = _session_user(session_key)
        staff = bool(user and user.is_staff and customer_for_user(user=user) is None)
        return {
            "schema_name": domain.tenant.schema_name,
            "user_id": user.pk if user else None,
            "is_operator_staff": staff,
        }
    finally:
        connection.set_schema_to_public()


class TenantSessionMiddleware:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1").split(":")[0].lower()
        cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        morsel = cookies.get(settings.SESSION_COOKIE_NAME)
        resolved = await resolve_scope(host, morsel.value if morsel else None)
        return await self.inner({**scope, **resolved}, receive, send)
