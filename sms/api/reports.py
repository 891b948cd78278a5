"""SMS reports in the API (`/api/v1/sms/reports/…`): thin views over `sms.selectors_reports`.

- `today`: today's messages, parts and credit (operator's time zone), per status;
- `messages` (or `messages.csv`): the per-message report, paginated JSON, or the whole period as streamed CSV
  with `?format=csv`;
- `summary?by=day|month`: messages, parts, unit price and credit per period, country and mobile operator (JSON or
  `?format=csv`); staff also get cost, unit cost and margin, per client with `per_client=true`.

A client's logins and keys see their own messages only; the operator's staff see all of them and may choose one
`client` (an id of `/api/v1/sms/clients`). Periods: `from` and `to` are ISO dates or date-times (a date, or a
date-time without offset, is read in the operator's time zone), `from` inclusive and `to` exclusive, at most
366 days; both default to today (the summary: this month by day, this year by month).
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.api.reports import PeriodBoundField
from billing.selectors.reports import operator_time_zone
from core.api.permissions import StaffOrCustomer
from core.selectors import customer_for_user

from ..choices import MessageStatus
from ..models import Message, SmsClient
from ..selectors_reports import (
    REPORT_GROUPS,
    MessageFilters,
    ReportInvalid,
    lines_async,
    local_today,
    report_period_check,
    sms_client_names,
    sms_message_report,
    sms_message_report_csv,
    sms_summary_report,
    sms_summary_report_csv,
    sms_today_totals,
)

# --- parameters ---------------------------------------------------------------------------------------------------


class ReportNegotiation(DefaultContentNegotiation):
    """Answers are JSON, or CSV the views stream themselves when `?format=csv`; any other format is a 400 naming
    the field (DRF would answer 404)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        wanted = request.query_params.get("format")
        if wanted not in (None, "json", "csv"):
            raise serializers.ValidationError({"format": [f"Choose json or csv; got {wanted!r}."]})
        return renderers[0], renderers[0].media_type


def _wants_csv(request, view) -> bool:
    return getattr(view, "csv_only", False) or request.query_params.get("format") == "csv"


class ReportPeriodSerializer(serializers.Serializer):
    """`from` (inclusive) and `to` (exclusive); today by default."""

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = PeriodBoundField(
            required=False, help_text="Start, inclusive: ISO date or date-time (operator's zone if no offset)."
        )
        fields["to"] = PeriodBoundField(
            required=False, help_text="End, exclusive: ISO date or date-time. Default: the end of today."
        )
        return fields

    def default_start(self, zone: ZoneInfo, today: datetime) -> datetime:
        return today

    def validate(self, attrs):
        zone = ZoneInfo(self.context["time_zone"])
        today, tomorrow = local_today(tz=self.context["time_zone"])
        attrs.setdefault("from", self.default_start(zone, today))
        attrs.setdefault("to", tomorrow)
        try:
            report_period_check(start=attrs["from"], end=attrs["to"])
        except ReportInvalid as exc:
            raise _invalid(exc) from exc
        return attrs


def _client_field() -> serializers.PrimaryKeyRelatedField:
    return serializers.PrimaryKeyRelatedField(
        queryset=SmsClient.objects.all(),
        required=False,
        error_messages={"does_not_exist": "No SMS client {pk_value}."},
        help_text="Staff only: one SMS client (an id of /api/v1/sms/clients).",
    )


class MessagesReportQuerySerializer(ReportPeriodSerializer):
    status = serializers.CharField(
        required=False, help_text="Statuses, comma-separated: " + ", ".join(MessageStatus.values) + "."
    )
    number = serializers.RegexField(
        r"^\+?\d{1,15}$", required=False, help_text="Destination number or its prefix (E.164; + optional)."
    )
    sender = serializers.CharField(required=False, max_length=16)
    country = serializers.RegexField(r"^[A-Za-z]{2}$", required=False, help_text="ISO 3166 code, e.g. ES.")
    operator = serializers.CharField(required=False, max_length=80, help_text="Destination mobile network.")
    client = _client_field()

    def validate_status(self, value: str) -> tuple[str, ...]:
        statuses = tuple(s.strip() for s in value.split(",") if s.strip())
        unknown = [s for s in statuses if s not in MessageStatus.values]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown status {', '.join(unknown)}; choose from {', '.join(MessageStatus.values)}."
            )
        return statuses

    def filters(self) -> MessageFilters:
        data = self.validated_data
        return MessageFilters(
            statuses=data.get("status", ()),
            number_prefix=data.get("number", "").lstrip("+"),
            sender=data.get("sender", ""),
            country=data.get("country", ""),
            mobile_operator=data.get("operator", ""),
            client=data.get("client"),
        )


class SummaryQuerySerializer(ReportPeriodSerializer):
    by = serializers.CharField(default="day", help_text="Lines per `day` or per `month` (operator's time zone).")
    client = _client_field()
    per_client = serializers.BooleanField(default=False, help_text="Staff only: one line per client.")

    def validate_by(self, value: str) -> str:
        if value not in REPORT_GROUPS:
            raise serializers.ValidationError(f"Choose one of {', '.join(REPORT_GROUPS)}; got {value!r}.")
        return value

    def default_start(self, zone: ZoneInfo, today: datetime) -> datetime:
        # This month by day, this year by month.
        start = today.replace(day=1)
        if self.initial_data.get("by") == "month":
            start = start.replace(month=1)
        return start


def _context(request) -> dict:
    tenant = getattr(request, "tenant", None)
    return {"request": request, "time_zone": getattr(tenant, "time_zone", None) or operator_time_zone()}


def _query(serializer_class, request):
    query = serializer_class(data=request.query_params.dict(), context=_context(request))
    query.is_valid(raise_exception=True)
    return query


def operator_zone(request):
    """Times in the answer are written in the operator's time zone, as the report's days are."""
    return timezone.override(ZoneInfo(_context(request)["time_zone"]))


def _invalid(exc: ReportInvalid) -> serializers.ValidationError:
    return serializers.ValidationError({exc.field: [str(exc)]})


def csv_stream_response(lines, *, request, filename: str) -> StreamingHttpResponse:
    """A CSV download streamed as it is read: asynchronously under ASGI (uvicorn), else as it is."""
    django_request = getattr(request, "_request", request)  # DRF's request wraps Django's
    content = lines_async(lines) if isinstance(django_request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _period_name(data: dict) -> str:
    return f"{data['from']:%Y%m%d}-{(data['to'] - timedelta(microseconds=1)):%Y%m%d}"


FORMAT_PARAMETER = OpenApiParameter(
    "format", OpenApiTypes.STR, enum=["json", "csv"], description="`csv`: the whole report as one CSV file."
)
CSV_RESPONSE = OpenApiResponse(OpenApiTypes.STR, description="The report as CSV (header line first).")
BAD_PARAMETER = OpenApiResponse(description="A parameter is invalid; `fields` names it (e.g. `to`, `status`).")


class ReportView(APIView):
    permission_classes = [StaffOrCustomer]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = ReportNegotiation

    @property
    def caller_customer(self):
        return customer_for_user(user=self.request.user)


# --- today --------------------------------------------------------------------------------------------------------


def _amount(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=None, decimal_places=None, read_only=True, **kwargs)


class CurrencyTotalSerializer(serializers.Serializer):
    currency = serializers.CharField()
    messages = serializers.IntegerField()
    parts = serializers.IntegerField()
    credit = _amount()


class TodaySerializer(serializers.Serializer):
    date = serializers.DateField(help_text="Today in the operator's time zone.")
    time_zone = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    messages = serializers.IntegerField(help_text="Every message accepted today, whatever became of it.")
    parts = serializers.IntegerField(help_text="Parts charged (and not refunded).")
    credit = _amount(allow_null=True, help_text="Credit deducted; null when the messages are in several currencies.")
    currency = serializers.CharField(allow_null=True)
    pending = serializers.IntegerField(help_text="Waiting to be sent (their credit is reserved, not deducted yet).")
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Undelivered, expired or rejected.")
    by_status = serializers.DictField(child=serializers.IntegerField())
    by_currency = CurrencyTotalSerializer(many=True)
    decimal_places = serializers.IntegerField(help_text="Totals are rounded half-up to this many places.")


class TodayReportView(ReportView):
    """Today's totals: messages, parts and credit (the caller's own; all of the operator's for staff)."""

    @extend_schema(summary="Today's totals: messages, parts, credit deducted, per status", responses=TodaySerializer)
    def get(self, request):
        tz = _context(request)["time_zone"]
        with operator_zone(request):
            return Response(TodaySerializer(sms_today_totals(customer=self.caller_customer, tz=tz)).data)


# --- per message --------------------------------------------------------------------------------------------------


class MessageReportRowSerializer(serializers.Serializer):
    message_id = serializers.IntegerField(source="id")
    date = serializers.DateTimeField(source="created_at", help_text="When it was accepted.")
    number = serializers.CharField(source="destination")
    type = serializers.CharField(help_text="text (GSM 03.38) or unicode (UCS-2).")
    length = serializers.IntegerField(help_text="GSM septets or UTF-16 code units.")
    parts = serializers.IntegerField()
    sender = serializers.CharField()
    country = serializers.CharField()
    operator = serializers.CharField(source="mobile_operator", help_text="Destination mobile network.")
    credit = _amount(help_text="Credit deducted (0 while queued, or when refunded).")
    currency = serializers.CharField()
    status = serializers.CharField()
    error_code = serializers.CharField()
    description = serializers.CharField(source="error_description")
    client_reference = serializers.CharField()


class StaffMessageReportRowSerializer(MessageReportRowSerializer):
    client_id = serializers.IntegerField(allow_null=True, help_text="The SMS client.")
    client_name = serializers.CharField()
    cost = _amount(help_text="What the gateway costs the operator.")


class MessagesReportView(ReportView, generics.ListAPIView):
    """The per-message report of a period: paginated JSON, or the whole period as CSV."""

    csv_only = False
    filter_backends = []

    def get_serializer_class(self):
        return MessageReportRowSerializer if self.caller_customer else StaffMessageReportRowSerializer

    queryset = Message.objects.none()  # for the schema; `list` builds the report

    @extend_schema(
        summary="Per-message report for a period (today by default): JSON pages, or `?format=csv` for all of it",
        parameters=[MessagesReportQuerySerializer, FORMAT_PARAMETER],
        responses={
            (200, "application/json"): StaffMessageReportRowSerializer(many=True),
            (200, "text/csv"): CSV_RESPONSE,
            400: BAD_PARAMETER,
        },
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    def list(self, request, *args, **kwargs):
        query = _query(MessagesReportQuerySerializer, request)
        data = query.validated_data
        customer = self.caller_customer
        try:
            rows = sms_message_report(customer=customer, start=data["from"], end=data["to"], filters=query.filters())
        except ReportInvalid as exc:
            raise _invalid(exc) from exc
        if _wants_csv(request, self):
            lines = sms_message_report_csv(rows=rows, staff=customer is None, tz=_context(request)["time_zone"])
            return csv_stream_response(lines, request=request, filename=f"sms-messages-{_period_name(data)}.csv")
        page = self.paginate_queryset(rows)
        if customer is None:
            names = sms_client_names(row["customer_id"] for row in page)
            for row in page:
                row["client_id"], row["client_name"] = names.get(row["customer_id"], (None, ""))
        with operator_zone(request):
            return self.get_paginated_response(self.get_serializer(page, many=True).data)


class MessagesCsvReportView(MessagesReportView):
    """The per-message report of a period as one CSV file (`messages.csv`)."""

    csv_only = True
    pagination_class = None

    @extend_schema(
        summary="Per-message report for a period (today by default) as CSV",
        parameters=[MessagesReportQuerySerializer],
        responses={(200, "text/csv"): CSV_RESPONSE, 400: BAD_PARAMETER},
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)


# --- summary ------------------------------------------------------------------------------------------------------


class SummaryTotalSerializer(serializers.Serializer):
    currency = serializers.CharField()
    messages = serializers.IntegerField()
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="Undelivered, expired or rejected.")
    parts = serializers.IntegerField(help_text="Parts charged (and not refunded).")
    unit_price = _amount(help_text="Credit per part.")
    credit = _amount(help_text="Credit deducted.")
    unit_cost = _amount(required=False, help_text="Staff only: cost per part.")
    cost = _amount(required=False, help_text="Staff only: what the gateways cost.")
    margin = _amount(required=False, help_text="Staff only: credit - cost.")


class SummaryRowSerializer(SummaryTotalSerializer):
    period = serializers.CharField(help_text="YYYY-MM-DD or YYYY-MM, in the operator's time zone.")
    country = serializers.CharField()
    operator = serializers.CharField(source="mobile_operator", help_text="Destination mobile network.")
    client_id = serializers.IntegerField(required=False, allow_null=True, help_text="With per_client only.")
    client_name = serializers.CharField(required=False)


class SummarySerializer(serializers.Serializer):
    by = serializers.CharField(source="group")
    time_zone = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    decimal_places = serializers.IntegerField(help_text="Credit, cost and margin lines are rounded half-up to this.")
    rows = SummaryRowSerializer(many=True)
    totals = SummaryTotalSerializer(many=True, help_text="One line per currency.")


class SummaryReportView(ReportView):
    """Messages, parts, unit price and credit per day or month and mobile operator; cost and margin for staff."""

    @extend_schema(
        summary="Summary per mobile operator by day or month (JSON or `?format=csv`)",
        parameters=[SummaryQuerySerializer, FORMAT_PARAMETER],
        responses={(200, "application/json"): SummarySerializer, (200, "text/csv"): CSV_RESPONSE, 400: BAD_PARAMETER},
    )
    def get(self, request):
        data = _query(SummaryQuerySerializer, request).validated_data
        try:
            report = sms_summary_report(
                customer=self.caller_customer,
                start=data["from"],
                end=data["to"],
                group=data["by"],
                tz=_context(request)["time_zone"],
                client=data.get("client"),
                per_client=data["per_client"],
            )
        except ReportInvalid as exc:
            raise _invalid(exc) from exc
        if _wants_csv(request, self):
            lines = sms_summary_report_csv(report=report)
            return csv_stream_response(lines, request=request, filename=f"sms-summary-{_period_name(data)}.csv")
        with operator_zone(request):
            return Response(SummarySerializer(report).data)
