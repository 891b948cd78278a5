from django.urls import path

from core.api.routers import Router

from .views import ApiKeyViewSet, MeView

router = Router()
router.register("api-keys", ApiKeyViewSet, basename="api-key")

urlpatterns = [path("me", MeView.as_view(), name="me"), *router.urls]
