"""Rerating, statements and reports in the billing API: thin views over `services.rerate` and `selectors.reports`.

- `rerate` (staff): `POST` queues a what-if (202: a `queued` run a worker fills with the differences per account
  and destination), `GET /{id}` polls it (status, progress; a run whose task never reached a worker is sent again,
  `rerate.rerate_runs_resume`), `POST /{id}/confirm` queues posting its adjustments
  (202 `confirming`; 200 once confirmed; 409 when not ready, failed, or stale: `rerate_stale`).
- `statements/{account_id}` (staff; a customer for its own accounts only, others are 404): JSON or CSV
  (`?format=csv` or `Accept: text/csv`).
- `reports/revenue` and `reports/unrated` (staff).

Periods: `from` and `to` are ISO dates or date-times; a date (or a date-time without offset) is read in
the operator's time zone, `from` is inclusive and `to` exclusive; both default to last calendar month.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import Conflict
from core.api.permissions import IsOperatorStaff, StaffOrCustomer
from core.api.viewsets import CustomerScopedMixin

from ..choices import RerateStatus
from ..models import Account, RerateRun, Tariff
from ..selectors.reports import (
    REPORT_GROUPS,
    account_statement,
    account_statement_csv,
    operator_time_zone,
    revenue_report,
    unrated_report,
)
from ..services.rerate import (
    RerateInvalid,
    RerateNotReady,
    rerate_confirm_request,
    rerate_request,
    rerate_runs_resume,
)

# --- Periods ----------------------------------------------------------------------------------------


def last_calendar_month(zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Midnight on the 1st of last month and of this month, wall-clock in ``zone``."""
    this_month = timezone.now().astimezone(zone).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    previous = (this_month - timedelta(days=1)).replace(day=1)
    return previous, this_month


@extend_schema_field(OpenApiTypes.STR)
class PeriodBoundField(serializers.Field):
    """An ISO date or date-time; without an offset it is wall-clock time in the operator's zone."""

    default_error_messages = {"invalid": "Give an ISO date (YYYY-MM-DD) or date-time, got {value!r}."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        text = data.strip()
        if "T" in text and " " in text:  # an unencoded "+01:00" arrives as " 01:00"
            text = text.replace(" ", "+")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail("invalid", value=data)
        if moment.utcoffset() is None:
            moment = moment.replace(tzinfo=ZoneInfo(self.context.get("time_zone") or operator_time_zone()))
        return moment

    def to_representation(self, value):
        return value.isoformat()


class PeriodSerializer(serializers.Serializer):
    """`from` (inclusive) and `to` (exclusive); both default to last calendar month in the operator's zone."""

    period_required = False

    def get_fields(self):
        fields = super().get_fields()
        required = self.period_required
        fields["from"] = PeriodBoundField(
            required=required, help_text="Start, inclusive: ISO date or date-time (operator's zone if no offset)."
        )
        fields["to"] = PeriodBoundField(required=required, help_text="End, exclusive: ISO date or date-time.")
        return fields

    def validate(self, attrs):
        zone = ZoneInfo(self.context.get("time_zone") or operator_time_zone())
        default_start, default_end = last_calendar_month(zone)
        attrs.setdefault("from", default_start)
        attrs.setdefault("to", default_end)
        if attrs["to"] <= attrs["from"]:
            raise serializers.ValidationError({"to": ["`to` must be after `from`."]})
        return attrs


class RevenueQuerySerializer(PeriodSerializer):
    group = serializers.ChoiceField(choices=REPORT_GROUPS, default="day", help_text="Lines per day or per month.")


class RerateRequestSerializer(PeriodSerializer):
    period_required = True
    account = serializers.PrimaryKeyRelatedField(
        queryset=Account.objects.all(), required=False, allow_null=True, help_text="Only this account (empty: all)."
    )
    tariff = serializers.PrimaryKeyRelatedField(
        queryset=Tariff.objects.all(),
        required=False,
        allow_null=True,
        help_text="Candidate price tariff (empty: each account's current tariff).",
    )


def _context(request) -> dict:
    tenant = getattr(request, "tenant", None)
    return {"request": request, "time_zone": getattr(tenant, "time_zone", None) or operator_time_zone()}


# --- Rerate -----------------------------------------------------------------------------------------


def _amount() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=None, decimal_places=None, read_only=True)


class RerateAmountsSerializer(serializers.Serializer):
    cdrs = serializers.IntegerField(help_text="CDRs re-rated.")
    changed = serializers.IntegerField(help_text="Of which the price changes.")
    no_rate = serializers.IntegerField(help_text="CDRs the tariff has no rate for (left as they are).")
    old_total = _amount()
    new_total = _amount()
    difference = serializers.DecimalField(
        max_digits=None, decimal_places=None, read_only=True, help_text="new - old: positive, the customer pays more."
    )


class RerateDestinationSerializer(RerateAmountsSerializer):
    destination = serializers.CharField(help_text="The CDRs' destination before re-rating.")


class RerateAccountSerializer(RerateAmountsSerializer):
    account_id = serializers.IntegerField()
    account_code = serializers.CharField()
    account_name = serializers.CharField()
    currency = serializers.CharField()
    tariff_id = serializers.IntegerField()
    tariff_name = serializers.CharField()
    destinations = RerateDestinationSerializer(many=True)


class RerateTotalSerializer(RerateAmountsSerializer):
    currency = serializers.CharField()


class RerateSkippedSerializer(serializers.Serializer):
    reason = serializers.CharField()
    cdrs = serializers.IntegerField()


class RerateConfirmedSerializer(serializers.Serializer):
    entries = serializers.IntegerField(help_text="Adjustment entries posted.")
    adjusted = serializers.DecimalField(
        max_digits=None, decimal_places=None, read_only=True, help_text="Their sum (minus the difference)."
    )
    cdrs = serializers.IntegerField(help_text="CDRs whose rating was rewritten.")


class RerateSummarySerializer(serializers.Serializer):
    time_zone = serializers.CharField()
    cdrs = serializers.IntegerField()
    changed = serializers.IntegerField()
    totals = RerateTotalSerializer(many=True)
    accounts = RerateAccountSerializer(many=True)
    skipped = RerateSkippedSerializer(many=True)
    confirmed = RerateConfirmedSerializer(allow_null=True, required=False)


class RerateRunSerializer(serializers.ModelSerializer):
    summary = serializers.SerializerMethodField(help_text="The differences; null until the what-if is ready.")

    class Meta:
        model = RerateRun
        fields = [
            "id",
            "status",
            "progress_done",
            "progress_total",
            "error_code",
            "error",
            "tariff",
            "account",
            "period_start",
            "period_end",
            "summary",
            "started_at",
            "finished_at",
            "confirmed_at",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(RerateSummarySerializer(allow_null=True))
    def get_summary(self, run: RerateRun):
        return RerateSummarySerializer(run.summary).data if "accounts" in run.summary else None


class RerateNotReadyError(Conflict):
    default_code = "rerate_not_ready"


# The service names its arguments; the API names its fields.
_API_FIELD = {"start": "from", "end": "to"}


class RerateViewSet(
    CustomerScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Rerating and what-if runs: preview the differences of a period, then confirm them as adjustments."""

    customer_field = None
    permission_classes = [IsOperatorStaff]
    queryset = RerateRun.objects.select_related("account", "tariff")
    serializer_class = RerateRunSerializer
    filterset_fields = ["status", "account", "tariff"]
    ordering_fields = ["created_at", "period_start"]

    @extend_schema(
        summary="What-if: queue re-rating a period (nothing is written but the run); poll the run for its result",
        request=RerateRequestSerializer,
        responses={202: RerateRunSerializer},
    )
    def create(self, request, *args, **kwargs):
        body = RerateRequestSerializer(data=request.data, context=_context(request))
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            run = rerate_request(
                start=data["from"],
                end=data["to"],
                account=data.get("account"),
                tariff=data.get("tariff"),
                tz=_context(request)["time_zone"],
            )
        except RerateInvalid as exc:
            raise serializers.ValidationError({_API_FIELD.get(exc.field, exc.field): [str(exc)]}) from exc
        return Response(RerateRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    def retrieve(self, request, *args, **kwargs):
        """Poll a run; one whose task never reached a worker (or whose worker died) is sent again."""
        run = self.get_object()
        if rerate_runs_resume(run_id=run.pk):
            run.refresh_from_db()
        return Response(self.get_serializer(run).data)

    @extend_schema(
        summary="Confirm a what-if: queue posting its adjustments and re-pricing its CDRs (idempotent)",
        request=None,
        responses={
            200: RerateRunSerializer,
            202: RerateRunSerializer,
            409: OpenApiResponse(
                description="Not ready yet (`rerate_not_ready`), failed (`rerate_failed`), or stale (`rerate_stale`: "
                "prices, tariffs or CDRs changed since the what-if): run it again."
            ),
        },
    )
    @action(detail=True, methods=["post"], filter_backends=[])
    def confirm(self, request, pk=None):
        run = self.get_object()
        try:
            run = rerate_confirm_request(run=run)
        except RerateNotReady as exc:
            raise RerateNotReadyError(str(exc), code=exc.code) from exc
        done = run.status == RerateStatus.CONFIRMED
        return Response(RerateRunSerializer(run).data, status=status.HTTP_200_OK if done else status.HTTP_202_ACCEPTED)


# --- Statements -------------------------------------------------------------------------------------


class StatementAccountSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    kind = serializers.CharField()
    customer_id = serializers.IntegerField(allow_null=True)


class PeriodOutSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class UsageLineSerializer(serializers.Serializer):
    service = serializers.CharField()
    destination = serializers.CharField()
    count = serializers.IntegerField()
    billed_seconds = serializers.IntegerField()
    billed_minutes = _amount()
    units = serializers.IntegerField(help_text="SMS parts or USSD events.")
    amount = _amount()


class UsageTotalSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    amount = _amount()


class StatementEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    kind = serializers.CharField()
    description = serializers.CharField()
    cdr_id = serializers.IntegerField(allow_null=True)
    amount = _amount()


class KindTotalSerializer(serializers.Serializer):
    kind = serializers.CharField()
    count = serializers.IntegerField()
    amount = _amount()


class StatementSerializer(serializers.Serializer):
    """Every amount is one line: the exact sum of its records rounded once, half-up, to `decimal_places`."""

    account = StatementAccountSerializer()
    period = PeriodOutSerializer()
    decimal_places = serializers.IntegerField(help_text="settings.MONEY_LINE_DECIMAL_PLACES")
    opening_balance = _amount()
    closing_balance = _amount()
    usage = UsageLineSerializer(many=True)
    usage_total = UsageTotalSerializer()
    unrated_cdrs = serializers.IntegerField()
    entries = StatementEntrySerializer(many=True)
    totals_by_kind = KindTotalSerializer(many=True)
    entries_total = _amount()


class StatementCsvRenderer(BaseRenderer):
    """A statement as CSV (`selectors.reports.account_statement_csv`)."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return account_statement_csv(statement=data).encode(self.charset)


class FormatParamNegotiation(DefaultContentNegotiation):
    """Like DRF's, but an unknown `?format=` is a validation error naming the field, not a 404."""

    def select_renderer(self, request, renderers, format_suffix=None):
        wanted = request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
        formats = [renderer.format for renderer in renderers]
        if wanted is not None and wanted not in formats:
            raise serializers.ValidationError({"format": [f"Choose one of {', '.join(formats)}; got {wanted!r}."]})
        return super().select_renderer(request, renderers, format_suffix)


class StatementView(CustomerScopedMixin, generics.GenericAPIView):
    """An account's statement for a period, as JSON or CSV (a customer sees its own accounts only)."""

    customer_field = "customer"
    permission_classes = [StaffOrCustomer]
    queryset = Account.objects.all()
    lookup_url_kwarg = "account_id"
    serializer_class = StatementSerializer
    renderer_classes = [JSONRenderer, StatementCsvRenderer]
    content_negotiation_class = FormatParamNegotiation
    filter_backends = []
    pagination_class = None

    @extend_schema(
        summary="Account statement (JSON or CSV)",
        parameters=[PeriodSerializer],
        responses={
            (200, "application/json"): StatementSerializer,
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The statement as one CSV table."),
        },
    )
    def get(self, request, account_id: int):
        account = self.get_object()
        query = PeriodSerializer(data=request.query_params, context=_context(request))
        query.is_valid(raise_exception=True)
        start, end = query.validated_data["from"], query.validated_data["to"]
        statement = account_statement(account=account, start=start, end=end)
        if request.accepted_renderer.format == "csv":
            filename = f"statement-{account.code}-{start:%Y%m%d}-{end:%Y%m%d}.csv"
            return Response(statement, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return Response(StatementSerializer(statement).data)

    def finalize_response(self, request, response, *args, **kwargs):
        # Errors are always JSON, in the API's one error shape, whatever format was asked for.
        if response.status_code >= 400 and getattr(getattr(request, "accepted_renderer", None), "format", "") == "csv":
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)


# --- Reports ----------------------------------------------------------------------------------------


class RevenueLineSerializer(serializers.Serializer):
    currency = serializers.CharField()
    cdrs = serializers.IntegerField()
    billed_minutes = _amount()
    revenue = _amount()
    cost = _amount()
    margin = serializers.DecimalField(
        max_digits=None, decimal_places=None, read_only=True, help_text="price - cost of the CDRs with a known cost."
    )
    uncosted_cdrs = serializers.IntegerField(help_text="CDRs without a supplier cost (margin unknown).")


class RevenueRowSerializer(RevenueLineSerializer):
    period = serializers.CharField(help_text="YYYY-MM-DD or YYYY-MM, in the operator's time zone.")


class RevenueReportSerializer(serializers.Serializer):
    group = serializers.ChoiceField(choices=REPORT_GROUPS)
    time_zone = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    decimal_places = serializers.IntegerField()
    rows = RevenueRowSerializer(many=True)
    totals = RevenueLineSerializer(many=True)


class RevenueReportView(APIView):
    """The operator's revenue, cost and margin per day or month and currency (staff)."""

    permission_classes = [IsOperatorStaff]

    @extend_schema(
        summary="Revenue, cost and margin by day or month",
        parameters=[RevenueQuerySerializer],
        responses=RevenueReportSerializer,
    )
    def get(self, request):
        context = _context(request)
        query = RevenueQuerySerializer(data=request.query_params, context=context)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        report = revenue_report(start=data["from"], end=data["to"], group=data["group"], tz=context["time_zone"])
        return Response(RevenueReportSerializer(report).data)


class UnratedReasonSerializer(serializers.Serializer):
    reason = serializers.CharField()
    count = serializers.IntegerField()
    oldest = serializers.DateTimeField()
    newest = serializers.DateTimeField()


class UnratedReportSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    oldest = serializers.DateTimeField(allow_null=True)
    reasons = UnratedReasonSerializer(many=True)


class UnratedReportView(APIView):
    """The CDRs kept unrated, per reason: how many and since when (staff)."""

    permission_classes = [IsOperatorStaff]

    @extend_schema(summary="Unrated CDRs per reason", responses=UnratedReportSerializer)
    def get(self, request):
        return Response(UnratedReportSerializer(unrated_report()).data)
