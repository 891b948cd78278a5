"""An operator's domains (and its clients' subdomains): console, client panel, API, docs, live events, health."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.admin import operator_console
from core.health import healthz
from core.views import logo

handler400 = "core.errors.bad_request"
handler403 = "core.errors.permission_denied"
handler404 = "core.errors.not_found"
handler500 = "core.errors.server_error"

api_v1 = [
    path("", include("core.api.urls")),
    path("billing/", include("billing.api.urls")),
    path("sms/", include("sms.api.urls")),
]

urlpatterns = [
    path("admin/", operator_console.urls),
    path("healthz", healthz, name="healthz"),
    path("branding/logo", logo, name="logo"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(urlconf="config.urls_tenant"), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("sms/", include("sms.urls")),
    path("", include("core.urls")),
]
