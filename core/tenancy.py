"""Host → operator schema → client: the one place a request learns whose data it may touch.

- the platform domain(s) → public schema, platform console and platform API;
- an operator's domain → its schema;
- ``<client>.<operator domain>`` → the operator's schema, and ``request.host_customer`` is that client;
- anything else → 404, never another operator's site or the platform's;
- a suspended operator's hosts → 403 (branded page, or the JSON error under /api/).
"""

from django.db import connection
from django.http import HttpResponseForbidden, HttpResponseNotFound, JsonResponse
from django.template.loader import render_to_string
from django_tenants.middleware.main import TenantMainMiddleware
from django_tenants.utils import get_public_schema_name

from tenants.models import Domain

from .models import Customer


def error_json(status: int, code: str, message: str, fields: dict | None = None) -> JsonResponse:
    """The one JSON error shape of the whole API."""
    return JsonResponse({"error": {"code": code, "message": message, "fields": fields or {}}}, status=status)


def wants_json(request) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def _not_found(request):
    if wants_json(request):
        return error_json(404, "not_found", "Not found.")
    return HttpResponseNotFound(render_to_string("errors/404.html", request=None))


def resolve_host(hostname: str) -> tuple[Domain | None, str | None]:
    """The domain row a host reaches and, for a client subdomain, the client's label.

    One query: the host itself, or its parent for ``client.operator-domain``. Client subdomains
    exist only under operator domains, never under the platform's.
    """
    label, _, parent = hostname.partition(".")
    candidates = [hostname, parent] if parent else [hostname]
    found = {d.domain: d for d in Domain.objects.select_related("tenant").filter(domain__in=candidates)}
    if hostname in found:
        return found[hostname], None
    domain = found.get(parent)
    if domain is None or domain.tenant.schema_name == get_public_schema_name():
        return None, None
    return domain, label


class OperatorHostMiddleware(TenantMainMiddleware):
    def process_request(self, request):
        connection.set_schema_to_public()
        hostname = request.get_host().split(":")[0].lower().rstrip(".")
        request.host_customer = None
        domain, client_label = resolve_host(hostname)
        if domain is None:
            return _not_found(request)
        tenant = domain.tenant
        tenant.domain_url = hostname
        request.tenant = tenant
        request.operator_domain = domain.domain
        connection.set_tenant(tenant)
        self.setup_url_routing(request)
        if tenant.schema_name == get_public_schema_name():
            return None
        if tenant.is_suspended:
            return suspended_response(request, tenant)
        if client_label:
            request.host_customer = Customer.objects.active().filter(subdomain=client_label).first()
            if request.host_customer is None:
                return _not_found(request)
        return None


def suspended_response(request, tenant):
    if wants_json(request):
        return error_json(403, "operator_suspended", f"{tenant.brand} is suspended.")
    html = render_to_string("errors/suspended.html", {"operator": tenant})
    return HttpResponseForbidden(html)
