from django.urls import re_path

from core.api.routers import Router

from . import views

router = Router()
router.register("tariffs", views.TariffViewSet, basename="tariff")
router.register(r"tariffs/(?P<tariff_id>[0-9]+)/rates", views.RateViewSet, basename="tariff-rate")
router.register("time-bands", views.TimeBandViewSet, basename="time-band")
router.register("tariff-classes", views.TariffClassViewSet, basename="tariff-class")
router.register("trunks", views.TrunkViewSet, basename="trunk")
router.register("packages", views.MinutePackageViewSet, basename="package")
router.register("freephone-numbers", views.FreephoneNumberViewSet, basename="freephone-number")
router.register("cdr-formats", views.CdrFormatViewSet, basename="cdr-format")
router.register("accounts", views.AccountViewSet, basename="account")
router.register("ledger-entries", views.LedgerEntryViewSet, basename="ledger-entry")
router.register("reservations", views.ReservationViewSet, basename="reservation")
router.register("cdrs", views.CdrViewSet, basename="cdr")

urlpatterns = [re_path(r"^quote/?$", views.QuoteView.as_view(), name="quote"), *router.urls]

# Rerating, statements and reports (billing/api/reports.py).
from . import reports  # noqa: E402

reports_router = Router()
reports_router.register("rerate", reports.RerateViewSet, basename="rerate")
urlpatterns += [
    re_path(r"^statements/(?P<account_id>[0-9]+)/?$", reports.StatementView.as_view(), name="statement"),
    re_path(r"^reports/revenue/?$", reports.RevenueReportView.as_view(), name="report-revenue"),
    re_path(r"^reports/unrated/?$", reports.UnratedReportView.as_view(), name="report-unrated"),
    *reports_router.urls,
]
