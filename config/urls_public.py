"""The platform domain: super-admin console, platform API, docs, health."""

from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.health import healthz
from core.views import logo
from tenants.admin import platform_console

handler400 = "core.errors.bad_request"
handler403 = "core.errors.permission_denied"
handler404 = "core.errors.not_found"
handler500 = "core.errors.server_error"

urlpatterns = [
    path("admin/", platform_console.urls),
    path("healthz", healthz, name="healthz"),
    path("branding/logo.svg", logo, name="logo"),
    path("api/v1/platform/", include("tenants.api.urls")),
    path("api/v1/", include("core.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(urlconf="config.urls_public"), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("", RedirectView.as_view(url="/admin/")),
]
