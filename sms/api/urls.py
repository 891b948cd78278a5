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

# Reports (sms/api/reports.py).
from . import reports  # noqa: E402

urlpatterns += [
    re_path(r"^reports/today/?$", reports.TodayReportView.as_view(), name="sms-report-today"),
    re_path(r"^reports/messages\.csv$", reports.MessagesCsvReportView.as_view(), name="sms-report-csv"),
    re_path(r"^reports/messages/?$", reports.MessagesReportView.as_view(), name="sms-report-messages"),
    re_path(r"^reports/summary/?$", reports.SummaryReportView.as_view(), name="sms-report-summary"),
]

# Bulk jobs and cancelling a queued message (sms/api/jobs.py).
from . import jobs  # noqa: E402

jobs_router = Router()
jobs_router.register("jobs", jobs.SmsJobViewSet, basename="sms-job")
urlpatterns += [
    re_path(r"^messages/(?P<pk>[0-9]+)/cancel/?$", jobs.MessageCancelView.as_view(), name="sms-message-cancel"),
    *jobs_router.urls,
]
