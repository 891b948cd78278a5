"""SMS reports in the operator console: the summary per mobile operator (and client) by day or month, with credit,
cost and margin, and its CSV export; the per-message report of the same period as CSV. Reached from the messages'
list (`/admin/sms/message/reports/`), mixed into `MessageAdmin` in sms/admin.py.

Console dates are whole days in the operator's time zone, both ends included (the API's `to` is exclusive).
"""

from datetime import datetime
from zoneinfo import ZoneInfo

from django import forms
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from billing.selectors.reports import operator_time_zone

from .api.reports import csv_stream_response
from .models import SmsClient
from .selectors_reports import (
    REPORT_GROUPS,
    MessageFilters,
    ReportInvalid,
    local_days_period,
    sms_message_report,
    sms_message_report_csv,
    sms_summary_report,
    sms_summary_report_csv,
)

DATE_INPUT = forms.DateInput(attrs={"type": "date"})


class SmsReportForm(forms.Form):
    """A period of whole days in the operator's zone, both ends included; optionally one client, or per client."""

    period_from = forms.DateField(label="From", widget=DATE_INPUT)
    period_to = forms.DateField(label="To (included)", widget=DATE_INPUT)
    group = forms.ChoiceField(label="By", choices=[(g, g.title()) for g in REPORT_GROUPS], initial="day")
    client = forms.ModelChoiceField(
        queryset=SmsClient.objects.select_related("customer"), required=False, empty_label="All clients"
    )
    per_client = forms.BooleanField(label="One line per client", required=False)

    def clean(self):
        data = super().clean()
        first, last = data.get("period_from"), data.get("period_to")
        if first and last:
            try:
                self.period = local_days_period(first=first, last=last, zone=self.zone)
            except ReportInvalid as exc:
                self.add_error("period_to", str(exc))
        return data

    def __init__(self, *args, zone: ZoneInfo, **kwargs):
        super().__init__(*args, **kwargs)
        self.zone = zone

    def bounds(self) -> tuple[datetime, datetime]:
        return self.period


class MessageReportsMixin:
    """Adds the reports page to the messages' admin (and a link to it above their list)."""

    change_list_template = "sms/reports_message_change_list.html"

    def get_urls(self):
        own = [path("reports/", self.admin_site.admin_view(self.reports_view), name="sms_message_reports")]
        return own + super().get_urls()

    def reports_view(self, request):
        if not request.user.has_perm("sms.view_message"):
            raise PermissionDenied
        tz = operator_time_zone()
        zone = ZoneInfo(tz)
        today = timezone.now().astimezone(zone).date()
        form = SmsReportForm(
            request.GET or {"period_from": today.replace(day=1), "period_to": today, "group": "day"}, zone=zone
        )
        report = None
        if form.is_valid():
            data = form.cleaned_data
            start, end = form.bounds()
            name = f"{data['period_from']:%Y%m%d}-{data['period_to']:%Y%m%d}"
            if request.GET.get("format") == "messages_csv":
                rows = sms_message_report(
                    customer=None, start=start, end=end, filters=MessageFilters(client=data["client"])
                )
                lines = sms_message_report_csv(rows=rows, staff=True, tz=tz)
                return csv_stream_response(lines, request=request, filename=f"sms-messages-{name}.csv")
            report = sms_summary_report(
                customer=None,
                start=start,
                end=end,
                group=data["group"],
                tz=tz,
                client=data["client"],
                per_client=data["per_client"],
            )
            if request.GET.get("format") == "csv":
                lines = sms_summary_report_csv(report=report)
                return csv_stream_response(lines, request=request, filename=f"sms-summary-{name}.csv")
        query = request.GET.copy()
        query.pop("format", None)
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            "sms/reports_console.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "SMS summary: traffic, credit, cost and margin",
                "form": form,
                "report": report,
                "query": query.urlencode(),
            },
        )
