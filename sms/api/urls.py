from django.urls import re_path

from core.api.routers import Router

from . import views

router = Router()
router.register("messages", views.MessageViewSet, basename="sms-message")
router.register("clients", views.SmsClientViewSet, basename="sms-client")
router.register("gateways", views.GatewayViewSet, basename="sms-gateway")
router.register("routes", views.RouteViewSet, basename="sms-route")
router.register("prefixes", views.NumberPrefixViewSet, basename="sms-prefix")
router.register("lists", views.ListEntryViewSet, basename="sms-list-entry")
router.register("spam-rules", views.SpamRuleViewSet, basename="sms-spam-rule")
router.register("fraud-limits", views.FraudLimitViewSet, basename="sms-fraud-limit")
router.register("incoming", views.IncomingMessageViewSet, basename="sms-incoming")

urlpatterns = [re_path(r"^send/?$", views.SendView.as_view(), name="sms-send"), *router.urls]
