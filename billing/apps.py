from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (unrated CDRs rate once what they missed is saved)
