from django.db import connection


def branding(request):
    """The operator's brand for every template; read from the request's tenant row, so a change shows at once."""
    tenant = getattr(request, "tenant", None)
    if tenant is None or connection.schema_name == "public":
        return {
            "brand": {
                "name": "OpenCarrier platform",
                "primary": "#263238",
                "accent": "#26a69a",
                "support_email": "",
                "logo_url": "/branding/logo.svg",
                "is_platform": True,
            },
            "host_customer": None,
        }
    return {
        "brand": {
            "name": tenant.brand,
            "primary": tenant.primary_colour,
            "accent": tenant.accent_colour,
            "support_email": tenant.support_email,
            # The updated_at stamp busts browser caches when the logo changes.
            "logo_url": f"/branding/logo?v={int(tenant.updated_at.timestamp())}",
            "is_platform": False,
        },
        "host_customer": getattr(request, "host_customer", None),
    }
