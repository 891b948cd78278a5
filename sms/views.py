"""The client panel's SMS pages: the client's messages with their status and today's totals; reports."""

import zoneinfo
from datetime import datetime, time

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import render
from django.utils import timezone

from core.selectors import customer_for_user

from .api.reports import csv_stream_response
from .choices import MessageStatus
from .selectors import message_list, messages_summary, sms_client_for_customer
from .selectors_reports import (
    MessageFilters,
    ReportInvalid,
    local_days_period,
    sms_message_report,
    sms_message_report_csv,
    sms_summary_report,
    sms_today_totals,
)

PAGE_SIZE = 50


def panel_client(request):
    """The logged-in SMS client's customer and client settings (404 for any other login)."""
    customer = customer_for_user(user=request.user)
    client = sms_client_for_customer(customer=customer)
    if client is None:
        raise Http404("Not an SMS client.")
    return customer, client


def panel_zone(request) -> zoneinfo.ZoneInfo:
    """The operator's time zone, in which the panel shows days and times."""
    return zoneinfo.ZoneInfo(getattr(request.tenant, "time_zone", "UTC"))


@login_required
def messages_page(request):
    customer, _ = panel_client(request)
    status = request.GET.get("status", "")
    queryset = message_list(customer=customer)
    if status in MessageStatus.values:
        queryset = queryset.filter(status=status)
    page = Paginator(queryset.only(*_COLUMNS), PAGE_SIZE).get_page(request.GET.get("page"))
    zone = panel_zone(request)
    midnight = datetime.combine(timezone.now().astimezone(zone).date(), time.min, tzinfo=zone)
    return render(
        request,
        "sms/messages.html",
        {
            "customer": customer,
            "page": page,
            "status": status,
            "statuses": MessageStatus.choices,
            "today": messages_summary(customer=customer, since=midnight),
        },
    )


_COLUMNS = (
    "id",
    "created_at",
    "destination",
    "sender",
    "text",
    "parts",
    "price",
    "currency",
    "status",
    "error_code",
    "error_description",
    "client_reference",
)


# --- reports (sms.selectors_reports) ---


class ReportForm(forms.Form):
    """The client panel's report period: whole days in the operator's zone, both ends included."""

    period_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    period_to = forms.DateField(label="To (included)", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    by = forms.ChoiceField(label="Summary by", choices=[("day", "Day"), ("month", "Month")], required=False)
    status = forms.ChoiceField(label="Status", choices=[("", "all"), *MessageStatus.choices], required=False)
    number = forms.RegexField(label="Number or prefix", regex=r"^\+?\d{1,15}$", required=False)

    def clean(self):
        data = super().clean()
        today = timezone.now().astimezone(self.zone).date()
        first, last = data.get("period_from") or today, data.get("period_to") or today
        try:
            self.period = local_days_period(first=first, last=last, zone=self.zone)
        except ReportInvalid as exc:
            self.add_error("period_to", str(exc))
        data["period_from"], data["period_to"], data["by"] = first, last, data.get("by") or "day"
        return data

    def __init__(self, *args, zone: zoneinfo.ZoneInfo, **kwargs):
        super().__init__(*args, **kwargs)
        self.zone = zone

    def bounds(self) -> tuple[datetime, datetime]:
        return self.period

    def filters(self) -> MessageFilters:
        data = self.cleaned_data
        return MessageFilters(
            statuses=(data["status"],) if data.get("status") else (), number_prefix=data.get("number", "").lstrip("+")
        )


def _report_form(request) -> tuple:
    customer, _ = panel_client(request)
    zone = panel_zone(request)
    return customer, ReportForm(request.GET, zone=zone), zone


@login_required
def reports_page(request):
    """Today's totals, the summary per mobile operator and the per-message report of a period (today by default)."""
    customer, form, zone = _report_form(request)
    context = {"customer": customer, "form": form, "today": sms_today_totals(customer=customer, tz=str(zone))}
    if form.is_valid():
        start, end = form.bounds()
        rows = sms_message_report(customer=customer, start=start, end=end, filters=form.filters())
        query = request.GET.copy()
        query.pop("page", None)
        context.update(
            page=Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page")),
            summary=sms_summary_report(
                customer=customer, start=start, end=end, group=form.cleaned_data["by"], tz=str(zone)
            ),
            query=query.urlencode(),
        )
    return render(request, "sms/reports.html", context)


@login_required
def reports_csv(request):
    """The period's per-message report as CSV, streamed."""
    customer, form, zone = _report_form(request)
    if not form.is_valid():
        return HttpResponseBadRequest("; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    start, end = form.bounds()
    rows = sms_message_report(customer=customer, start=start, end=end, filters=form.filters())
    data = form.cleaned_data
    filename = f"sms-messages-{data['period_from']:%Y%m%d}-{data['period_to']:%Y%m%d}.csv"
    lines = sms_message_report_csv(rows=rows, staff=False, tz=str(zone))
    return csv_stream_response(lines, request=request, filename=filename)
