"""Rerating, statements and reports in the operator console (hooked from billing/admin.py).

- Rerate runs: "New what-if" (period, account, candidate tariff) queues a run a worker re-rates; the run's page
  shows its status and progress (reloading itself while a worker is at it), then the differences per account and
  destination and the confirm button, which queues the confirmation.
- Statement of an account (`…/reraterun/statement/?account=<id>&from=…&to=…`, CSV download).
- Revenue, cost and margin by day or month, with the unrated CDRs per reason.

Console dates are whole days in the operator's time zone, both ends included (the API's `to` is exclusive).
"""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from core.admin import operator_console

from .choices import RerateStatus, TariffKind
from .models import Account, RerateRun, Tariff
from .selectors.reports import (
    REPORT_GROUPS,
    account_statement,
    account_statement_csv,
    operator_time_zone,
    revenue_report,
    unrated_report,
)
from .services.rerate import (
    RerateInvalid,
    RerateNotReady,
    rerate_confirm_request,
    rerate_request,
    rerate_runs_resume,
)

DATE_INPUT = forms.DateInput(attrs={"type": "date"})


def _day_start(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def _last_month() -> tuple[date, date]:
    first_of_this = timezone.localdate(timezone=ZoneInfo(operator_time_zone())).replace(day=1)
    last_of_previous = first_of_this - timedelta(days=1)
    return last_of_previous.replace(day=1), last_of_previous


class PeriodForm(forms.Form):
    """A period of whole days in the operator's zone, both ends included."""

    period_from = forms.DateField(label="From", widget=DATE_INPUT)
    period_to = forms.DateField(label="To (included)", widget=DATE_INPUT)

    def clean(self):
        data = super().clean()
        if data.get("period_from") and data.get("period_to") and data["period_to"] < data["period_from"]:
            self.add_error("period_to", "The period must end on or after its first day.")
        return data

    def bounds(self) -> tuple[datetime, datetime]:
        zone = ZoneInfo(operator_time_zone())
        data = self.cleaned_data
        return _day_start(data["period_from"], zone), _day_start(data["period_to"] + timedelta(days=1), zone)


class WhatIfForm(PeriodForm):
    account = forms.ModelChoiceField(
        queryset=Account.objects.all(), required=False, empty_label="All accounts", help_text="Only this account."
    )
    tariff = forms.ModelChoiceField(
        queryset=Tariff.objects.filter(kind=TariffKind.PRICE),
        required=False,
        empty_label="Each account's current tariff",
        label="Candidate tariff",
    )


class StatementForm(PeriodForm):
    account = forms.ModelChoiceField(queryset=Account.objects.all())


class RevenueForm(PeriodForm):
    group = forms.ChoiceField(choices=[(g, g.title()) for g in REPORT_GROUPS], initial="day")


# Where a service's argument shows in the what-if form.
_FORM_FIELD = {"start": "period_from", "end": "period_to", "account": "account", "tariff": "tariff"}


@admin.register(RerateRun, site=operator_console)
class RerateRunAdmin(admin.ModelAdmin):
    """What-if runs. They are made by the what-if form and confirmed by their button; never edited."""

    list_display = [
        "id", "created_at", "period_start", "period_end", "account", "tariff", "status", "progress", "difference",
    ]  # fmt: skip
    list_filter = ["status"]
    list_select_related = ["account", "tariff"]
    change_list_template = "admin/billing/reports/reraterun_change_list.html"

    @admin.display(description="progress")
    def progress(self, obj):
        return f"{obj.progress_done} / {obj.progress_total}"

    @admin.display(description="difference")
    def difference(self, obj):
        return ", ".join(f"{t['difference']} {t['currency']}" for t in obj.summary.get("totals", [])) or "-"

    def has_change_permission(self, request, obj=None):
        return False  # runs are read; confirming has its own button and permission (add)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (
            obj is None or obj.status in (RerateStatus.READY, RerateStatus.FAILED)
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        own = [
            path("statement/", view(self.statement_view), name="billing_reraterun_statement"),
            path("revenue/", view(self.revenue_view), name="billing_reraterun_revenue"),
            path("<int:object_id>/confirm/", view(self.confirm_view), name="billing_reraterun_confirm"),
        ]
        return own + super().get_urls()

    def _render(self, request, template: str, title: str, **context) -> TemplateResponse:
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            f"admin/billing/reports/{template}",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": title,
                "operator_time_zone": operator_time_zone(),  # times read in the operator's zone
                **context,
            },
        )

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            form = WhatIfForm(request.POST)
            if form.is_valid():
                start, end = form.bounds()
                try:
                    run = rerate_request(
                        start=start, end=end, account=form.cleaned_data["account"], tariff=form.cleaned_data["tariff"]
                    )
                except RerateInvalid as exc:
                    form.add_error(_FORM_FIELD.get(exc.field), str(exc))
                else:
                    messages.info(request, "What-if queued; nothing is charged until you confirm it.")
                    return HttpResponseRedirect(reverse("console:billing_reraterun_change", args=[run.pk]))
        else:
            first, last = _last_month()
            form = WhatIfForm(initial={"period_from": first, "period_to": last})
        return self._render(request, "whatif_form.html", "New rerate what-if", form=form)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = get_object_or_404(RerateRun.objects.select_related("account", "tariff"), pk=object_id)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        if rerate_runs_resume(run_id=run.pk):  # its task never reached a worker: sent again while the page polls
            run.refresh_from_db()
        return self._render(
            request,
            "reraterun.html",
            f"Rerate run {run.pk}",
            original=run,
            run=run,
            summary=run.summary,
            can_confirm=run.status == RerateStatus.READY and self.has_add_permission(request),
            in_progress=run.status in (RerateStatus.QUEUED, RerateStatus.RUNNING, RerateStatus.CONFIRMING),
        )

    def confirm_view(self, request, object_id: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = get_object_or_404(RerateRun, pk=object_id)
        if not self.has_add_permission(request):
            raise PermissionDenied
        try:
            run = rerate_confirm_request(run=run)
        except RerateNotReady as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Rerate run {run.pk}: confirming, this page follows it.")
        return HttpResponseRedirect(reverse("console:billing_reraterun_change", args=[run.pk]))

    def statement_view(self, request):
        if not request.user.has_perm("billing.view_ledgerentry"):
            raise PermissionDenied
        first, last = _last_month()
        if "account" in request.GET and "period_from" not in request.GET:
            form = StatementForm({"account": request.GET["account"], "period_from": first, "period_to": last})
        elif request.GET:
            form = StatementForm(request.GET)
        else:
            form = StatementForm(initial={"period_from": first, "period_to": last})
        statement = None
        if form.is_bound and form.is_valid():
            start, end = form.bounds()
            account = form.cleaned_data["account"]
            statement = account_statement(account=account, start=start, end=end)
            if request.GET.get("format") == "csv":
                response = HttpResponse(account_statement_csv(statement=statement), content_type="text/csv")
                filename = f"statement-{account.code}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
                response["Content-Disposition"] = f'attachment; filename="{filename}"'
                return response
        query = request.GET.copy()
        query["format"] = "csv"
        return self._render(
            request, "statement.html", "Account statement", form=form, statement=statement, csv_query=query.urlencode()
        )

    def revenue_view(self, request):
        if not request.user.has_perm("billing.view_cdr"):
            raise PermissionDenied
        first, last = _last_month()
        form = RevenueForm(request.GET or {"period_from": first, "period_to": last, "group": "day"})
        report = None
        if form.is_valid():
            start, end = form.bounds()
            report = revenue_report(start=start, end=end, group=form.cleaned_data["group"])
        return self._render(
            request,
            "revenue.html",
            "Revenue, cost and margin",
            form=form,
            report=report,
            unrated=unrated_report(),
        )
