from rest_framework.routers import DefaultRouter


class Router(DefaultRouter):
    """The API's router: every path works with or without its trailing slash (POSTs cannot follow a redirect)."""

    include_root_view = False

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"
