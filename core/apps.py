from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared plumbing: customers and their logins, API keys, the API base classes, tenancy helpers."""

    name = "core"
    verbose_name = "Customers and access"
