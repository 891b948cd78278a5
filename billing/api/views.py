"""The billing REST API (`/api/v1/billing/` on operator domains): thin viewsets over the billing services.

Who sees what: the operator's staff read and write everything of their operator; a customer's login or API key
reads only its own accounts and their ledger entries, reservations and CDRs, and may quote with its own account.
Tariffs, trunks, classes, packages, freephone numbers and CDR formats are the operator's alone.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Count, ProtectedError
from django.http import Http404, HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.errors import Conflict
from core.api.parsers import CsvParser
from core.api.permissions import IsOperatorStaff, StaffWritesCustomersRead
from core.api.viewsets import CustomerScopedMixin
from core.selectors import customer_for_user

from .. import csvformats
from ..models import (
    Account,
    Cdr,
    CdrFormat,
    FreephoneNumber,
    LedgerEntry,
    MinutePackage,
    Rate,
    Reservation,
    Tariff,
    TariffClass,
    TimeBand,
    Trunk,
)
from ..selectors import tariff_quote
from ..selectors.decks import rates_read
from ..selectors.grid import class_grid_average, class_grid_get
from ..services import account_create, account_topup, cdrs_ingest, rates_import
from ..services.grid import GridCell, GridInvalid, class_grid_save, tariff_touch
from . import filtersets
from . import serializers as s

# --- Plumbing -------------------------------------------------------------------------------------


class RateDeckInvalid(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_rate_deck"
    default_detail = "The rate deck has bad lines; nothing was imported."

    def __init__(self, errors: list[dict]):
        super().__init__(f"The rate deck has {len(errors)} bad line(s); nothing was imported.")
        self.extra = {
            "fields": {"file": [f"line {e['line']}, {e['column'] or 'line'}: {e['reason']}" for e in errors]},
            "lines": errors,
        }


class CdrBatchRejected(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, result: dict):
        error = s.cdr_batch_rejected_error(result)
        super().__init__(error["message"])
        self.extra = {"fields": error["fields"], "summary": error["summary"]}


class ScopedObjectMixin(CustomerScopedMixin):
    """Scoped querysets, and a missing (or someone else's) object as the API's own 404 with code `not_found`."""

    def get_object(self):
        try:
            return super().get_object()
        except Http404 as exc:
            raise exceptions.NotFound() from exc


class StaffViewSet(ScopedObjectMixin, viewsets.ModelViewSet):
    """The operator's own configuration: staff only, and a customer's queryset is empty besides."""

    customer_field = None
    permission_classes = [IsOperatorStaff]

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except ProtectedError as exc:
            users = sorted({str(obj) for obj in exc.protected_objects})[:5]
            raise Conflict(f"{instance} is still used by: {', '.join(users)}.") from exc


def operator_zone(request) -> ZoneInfo:
    return ZoneInfo(getattr(request.tenant, "time_zone", None) or "UTC")


# --- Tariffs, rates, time bands, the grid -------------------------------------------------------------


def last_calendar_month(zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[first day of last month, first day of this month), midnight in the operator's zone: the default period."""
    today = timezone.now().astimezone(zone).date()
    first_this = today.replace(day=1)
    last_month = (first_this - timedelta(days=1)).replace(day=1)
    return (
        datetime(last_month.year, last_month.month, 1, tzinfo=zone),
        datetime(first_this.year, first_this.month, 1, tzinfo=zone),
    )


@extend_schema_view(
    list=extend_schema(summary="Tariffs (rate decks) of the operator"),
    create=extend_schema(summary="Create a tariff"),
)
class TariffViewSet(StaffViewSet):
    """Tariffs: a customer price deck or a supplier cost deck, with its class grid for freephone pricing."""

    serializer_class = s.TariffSerializer
    queryset = Tariff.objects.annotate(rates_count=Count("rates")).order_by("name")
    filterset_class = filtersets.TariffFilterSet
    ordering_fields = ["name", "kind", "created_at", "updated_at"]

    @extend_schema(methods=["GET"], summary="The tariff's class grid", responses=s.GridSerializer)
    @extend_schema(
        methods=["PUT"],
        summary="Replace the class grid (all cells or none)",
        request=s.GridWriteSerializer,
        responses={200: s.GridSerializer, 400: OpenApiResponse(description="Bad cells, each named; nothing saved.")},
    )
    @action(detail=True, methods=["get", "put"], url_path="grid", filterset_class=None)
    def grid(self, request, pk=None):
        tariff = self.get_object()
        if request.method == "PUT":
            body = s.GridWriteSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            cells = [GridCell(c["origination"], c["termination"], c["rate"]) for c in body.validated_data["cells"]]
            try:
                class_grid_save(tariff=tariff, cells=cells)
            except GridInvalid as exc:
                raise serializers.ValidationError(
                    {"cells": {f"{e.origination}:{e.termination}": [e.reason] for e in exc.errors}}
                ) from exc
        return Response(grid_as_dict(tariff))

    @extend_schema(
        summary="Flat per-minute figure of the grid over a period's traffic",
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATETIME, description="Start (default: last calendar month)."),
            OpenApiParameter("to", OpenApiTypes.DATETIME, description="End, exclusive."),
        ],
        responses=s.GridAverageSerializer,
    )
    @action(detail=True, methods=["get"], url_path="grid/average", filterset_class=None)
    def grid_average(self, request, pk=None):
        tariff = self.get_object()
        start, end = period_params(request)
        result = class_grid_average(tariff=tariff, start=start, end=end)
        return Response(grid_average_as_dict(tariff, start, end, result))


def period_params(request) -> tuple[datetime, datetime]:
    """`from` and `to` query parameters (ISO; a date is midnight in the operator's zone); default last month."""
    zone = operator_zone(request)
    default_start, default_end = last_calendar_month(zone)
    values, errors = {}, {}
    for name, default in (("from", default_start), ("to", default_end)):
        raw = request.query_params.get(name)
        if not raw:
            values[name] = default
            continue
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            errors[name] = [f"Give an ISO date or date-time, got {raw!r}."]
            continue
        values[name] = moment if moment.utcoffset() is not None else moment.replace(tzinfo=zone)
    if not errors and values["to"] <= values["from"]:
        errors["to"] = ["`to` must be after `from`."]
    if errors:
        raise serializers.ValidationError(errors)
    return values["from"], values["to"]


def grid_as_dict(tariff: Tariff) -> dict:
    """The grid as rows (origination classes) × columns (termination classes), through the engine's selector."""
    return s.GridSerializer(class_grid_get(tariff=tariff)).data


def grid_average_as_dict(tariff, start, end, result) -> dict:
    return s.GridAverageSerializer({"tariff_id": tariff.pk, **result, "start": start, "end": end}).data


class RateViewSet(ScopedObjectMixin, viewsets.ReadOnlyModelViewSet):
    """One tariff's rate deck: list (all versions, or those in force at `effective_at`), CSV import and export."""

    customer_field = None
    permission_classes = [IsOperatorStaff]
    serializer_class = s.RateSerializer
    queryset = Rate.objects.all()
    filterset_class = filtersets.RateFilterSet
    ordering_fields = ["prefix", "destination", "rate", "effective_from"]
    ordering = ["prefix", "service", "time_band", "effective_from"]
    parser_classes = [JSONParser, MultiPartParser, FormParser, CsvParser]

    @property
    def tariff(self) -> Tariff:
        if not hasattr(self, "_tariff"):
            self._tariff = Tariff.objects.filter(pk=self.kwargs["tariff_id"]).first()
            if self._tariff is None:
                raise exceptions.NotFound("No such tariff.")
        return self._tariff

    def get_queryset(self):
        return super().get_queryset().filter(tariff=self.tariff)

    @extend_schema(
        summary="Import a rate-deck CSV (multipart `file` or a text/csv body)",
        description="Any bad line: nothing is written and every bad line is reported (line, column, reason). "
        "`?dry_run=1` checks the file and writes nothing.",
        parameters=[OpenApiParameter("dry_run", OpenApiTypes.BOOL, description="Check only; write nothing.")],
        request={"multipart/form-data": s.RateDeckUploadSerializer, "text/csv": OpenApiTypes.STR},
        responses={
            200: s.RatesImportResultSerializer,
            400: OpenApiResponse(description="Bad lines (error.lines: line, column, reason); nothing written."),
        },
    )
    @action(detail=False, methods=["post"], url_path="import", filterset_class=None, pagination_class=None)
    def import_deck(self, request, tariff_id=None):
        tariff = self.tariff
        if isinstance(request.data, str):
            source = request.data
        else:
            upload = request.FILES.get("file")
            if upload is None:
                raise serializers.ValidationError({"file": ["Send the CSV as multipart `file` or as a text/csv body."]})
            try:
                source = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise serializers.ValidationError({"file": [f"The CSV is not UTF-8: {exc}"]}) from exc
        if not source.strip():
            raise serializers.ValidationError({"file": ["The CSV is empty."]})
        dry_run = request.query_params.get("dry_run", "").lower() in {"1", "true", "yes"}
        result = rates_import(tariff=tariff, source=source, dry_run=dry_run)
        if not result.ok:
            raise RateDeckInvalid(result.as_dict()["errors"])
        return Response(result.as_dict())

    @extend_schema(
        summary="Export the rate deck as CSV",
        parameters=[
            OpenApiParameter("effective_at", OpenApiTypes.DATETIME, description="Only versions in force then.")
        ],
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    @action(detail=False, methods=["get"], url_path="export", pagination_class=None)
    def export(self, request, tariff_id=None):
        rates = rates_read(self.filter_queryset(self.get_queryset()))
        response = HttpResponse(csvformats.write_rate_deck_csv(rates), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{self.tariff.name}-rates.csv"'
        return response


class TariffTouchingMixin:
    """Changes to a tariff's time bands or classes retire the caches built from it."""

    def perform_create(self, serializer):
        super().perform_create(serializer)
        tariff_touch(tariff=serializer.instance.tariff)

    def perform_update(self, serializer):
        super().perform_update(serializer)
        tariff_touch(tariff=serializer.instance.tariff)

    def perform_destroy(self, instance):
        tariff = instance.tariff
        super().perform_destroy(instance)
        tariff_touch(tariff=tariff)


class TimeBandViewSet(TariffTouchingMixin, StaffViewSet):
    """Time bands (peak, off-peak, weekend) of tariffs, in the operator's time zone."""

    serializer_class = s.TimeBandSerializer
    queryset = TimeBand.objects.select_related("tariff")
    filterset_class = filtersets.TimeBandFilterSet
    ordering_fields = ["name", "start"]


class TariffClassViewSet(TariffTouchingMixin, StaffViewSet):
    """Origination and termination classes of tariffs: the rows and columns of their grids."""

    serializer_class = s.TariffClassSerializer
    queryset = TariffClass.objects.select_related("tariff")
    filterset_class = filtersets.TariffClassFilterSet
    ordering_fields = ["position", "name"]


class TrunkViewSet(StaffViewSet):
    """Supplier trunks and the cost tariff that prices calls leaving by each."""

    serializer_class = s.TrunkSerializer
    queryset = Trunk.objects.select_related("cost_tariff")
    filterset_class = filtersets.TrunkFilterSet
    ordering_fields = ["name", "created_at"]


class MinutePackageViewSet(StaffViewSet):
    """Minute packages: included and volume-tiered minutes per month for a group of destinations."""

    serializer_class = s.MinutePackageSerializer
    queryset = MinutePackage.objects.all()
    filterset_class = filtersets.MinutePackageFilterSet
    ordering_fields = ["name", "created_at"]


class FreephoneNumberViewSet(StaffViewSet):
    """Freephone (8-800) numbers and the accounts of their owners, who pay for the calls."""

    serializer_class = s.FreephoneNumberSerializer
    queryset = FreephoneNumber.objects.select_related("account")
    filterset_class = filtersets.FreephoneNumberFilterSet
    ordering_fields = ["number", "created_at"]


class CdrFormatViewSet(StaffViewSet):
    """Saved column mappings for CDR files: the freephone platform's profile, generic CSVs."""

    serializer_class = s.CdrFormatSerializer
    queryset = CdrFormat.objects.all()
    filterset_class = filtersets.CdrFormatFilterSet
    ordering_fields = ["name", "created_at"]


# --- Quotes ---------------------------------------------------------------------------------------------


class QuoteView(APIView):
    """The price of one call or message with its breakdown, under a tariff (staff) or an account's tariff."""

    @extend_schema(
        summary="Quote a call or message",
        request=s.QuoteRequestSerializer,
        responses={200: s.QuoteSerializer, 404: OpenApiResponse(description="No such tariff or account, or no rate.")},
    )
    def post(self, request):
        zone = operator_zone(request)
        with timezone.override(zone):  # an `at` without an offset is the operator's local time
            body = s.QuoteRequestSerializer(data=request.data)
            body.is_valid(raise_exception=True)
        data = body.validated_data
        customer = customer_for_user(user=request.user)
        if customer is None and not request.user.is_staff:
            raise exceptions.PermissionDenied("Only the operator's staff or its customers may quote.")
        if "tariff" in data:
            if customer is not None:
                raise exceptions.PermissionDenied("A customer quotes with its own account: give `account`.")
            tariff = Tariff.objects.filter(pk=data["tariff"]).first()
            if tariff is None:
                raise exceptions.NotFound("No such tariff.")
        else:
            accounts = Account.objects.select_related("tariff")
            if customer is not None:
                accounts = accounts.filter(customer=customer)
            account = accounts.filter(pk=data["account"]).first()
            if account is None:
                raise exceptions.NotFound("No such account.")
            if account.tariff is None:
                raise serializers.ValidationError({"account": ["The account has no tariff to quote with."]})
            tariff = account.tariff
        quote = tariff_quote(
            tariff=tariff,
            number=data["to"],
            seconds=data["duration"],
            at=data.get("at") or timezone.now(),
            tz=zone.key,
            service=data["service"],
            units=data["units"],
        )
        if quote is None:
            raise exceptions.NotFound(f"No rate for {data['to']} ({data['service']}) in this tariff.", code="no_rate")
        return Response({"tariff": tariff.pk, **quote})


# --- Accounts and the books ----------------------------------------------------------------------------


class AccountViewSet(ScopedObjectMixin, viewsets.ModelViewSet):
    """Accounts (a customer's or the operator's own): staff open and manage them, a customer reads its own."""

    customer_field = "customer"
    permission_classes = [StaffWritesCustomersRead]
    serializer_class = s.AccountSerializer
    queryset = Account.objects.prefetch_related("packages")
    filterset_class = filtersets.AccountFilterSet
    ordering_fields = ["name", "code", "balance", "created_at"]

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        packages = data.pop("packages", [])
        data.setdefault("currency", getattr(self.request.tenant, "currency", None) or "EUR")
        if data.get("tariff") is not None and data["tariff"].currency != data["currency"]:
            raise serializers.ValidationError(
                {"tariff": [f"The tariff is in {data['tariff'].currency}, the account in {data['currency']}."]}
            )
        with transaction.atomic():
            account = account_create(**data)
            if packages:
                account.packages.set(packages)
        serializer.instance = account

    @extend_schema(
        summary="Top up an account (once per idempotency key)",
        request=s.TopupSerializer,
        responses={
            201: s.TopupResultSerializer,
            200: OpenApiResponse(s.TopupResultSerializer, description="The key was seen before: nothing new."),
            409: OpenApiResponse(description="The key was used for another account or amount."),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[IsOperatorStaff], filterset_class=None)
    def topup(self, request, pk=None):
        account = self.get_object()
        body = s.TopupSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key = f"topup:{data['idempotency_key']}"
        entry, created = account_topup(
            account=account, amount=data["amount"], idempotency_key=key, description=data["description"]
        )
        if not created and (entry.account_id != account.pk or entry.amount != data["amount"]):
            raise Conflict("This idempotency_key was already used for a different top-up.")
        account.refresh_from_db()
        payload = {"created": created, "entry": entry, "account": account}
        return Response(
            s.TopupResultSerializer(payload).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict(f"{instance} has ledger entries, CDRs or numbers; it cannot be deleted.") from exc


class LedgerEntryViewSet(ScopedObjectMixin, viewsets.ReadOnlyModelViewSet):
    """Ledger entries (append-only): every top-up, charge, refund and adjustment."""

    customer_field = "account__customer"
    permission_classes = [StaffWritesCustomersRead]
    serializer_class = s.LedgerEntrySerializer
    queryset = LedgerEntry.objects.all()
    filterset_class = filtersets.LedgerEntryFilterSet
    ordering_fields = ["created_at", "amount"]


class ReservationViewSet(ScopedObjectMixin, viewsets.ReadOnlyModelViewSet):
    """Credit held for running calls and messages."""

    customer_field = "account__customer"
    permission_classes = [StaffWritesCustomersRead]
    serializer_class = s.ReservationSerializer
    queryset = Reservation.objects.all()
    filterset_class = filtersets.ReservationFilterSet
    ordering_fields = ["created_at", "expires_at", "amount"]


class CdrViewSet(ScopedObjectMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """CDRs with their rating (price, cost, margin; unrated ones with the reason); staff post JSON batches."""

    customer_field = "account__customer"
    permission_classes = [StaffWritesCustomersRead]
    serializer_class = s.CdrSerializer
    queryset = Cdr.objects.all()
    filterset_class = filtersets.CdrFilterSet
    ordering_fields = ["start", "created_at", "price"]

    def get_permissions(self):
        if self.action == "create":
            return [IsOperatorStaff()]
        return super().get_permissions()

    @extend_schema(
        summary="Ingest a JSON batch of CDRs (1 to 10,000)",
        description="Each record is checked on its own: bad ones are reported by position and field, good ones "
        "are stored, rated and charged. The same (source, source_id) twice is stored and charged once. "
        "A batch where every record is bad answers 400 with the same report.",
        request=s.CdrBatchSerializer,
        responses={
            200: s.CdrIngestResultSerializer,
            400: OpenApiResponse(description="The batch is malformed, or every record in it is bad."),
        },
    )
    def create(self, request, *args, **kwargs):
        zone = operator_zone(request)
        records, rejected, received = s.cdr_batch_parse(request.data, zone=zone)
        summary = cdrs_ingest(source=s.API_CDR_SOURCE, records=records, tz=zone.key) if records else None
        result = s.cdr_ingest_summary(received=received, rejected=rejected, summary=summary)
        if not records:
            raise CdrBatchRejected(result)
        return Response(result)
