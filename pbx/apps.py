from django.apps import AppConfig


class PbxConfig(AppConfig):
    """Cloud PBX: client companies, extensions, DIDs, IVR, routes (not built yet)."""

    name = "pbx"
    verbose_name = "Cloud PBX"
