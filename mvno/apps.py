from django.apps import AppConfig


class MvnoConfig(AppConfig):
    """Virtual mobile operator: subscribers, SIMs, call control (not built yet)."""

    name = "mvno"
    verbose_name = "Mobile (MVNO)"
