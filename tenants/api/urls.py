from core.api.routers import Router

from .views import OperatorViewSet

router = Router()
router.register("operators", OperatorViewSet, basename="operator")
urlpatterns = router.urls
