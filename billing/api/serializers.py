"""Serializers of the billing API: what each resource looks like on the wire, and input checks naming the field.

Money is a string with up to 6 decimal places (never a float). Business rules live in the services; these only
shape and check input.
"""

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.db.models import Max
from rest_framework import serializers

from .. import csvformats, rating
from ..choices import CdrFormatKind, Leg, Service, TariffKind
from ..models import (
    Account,
    Cdr,
    CdrFormat,
    ClassRate,
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

CURRENCY = re.compile(r"[A-Z]{3}")
DIGITS = re.compile(r"[0-9]{1,15}")


def money(**kwargs) -> serializers.DecimalField:
    kwargs.setdefault("min_value", Decimal(0))
    return serializers.DecimalField(max_digits=20, decimal_places=6, max_value=rating.MAX_PRICE - 1, **kwargs)


def currency_validate(value: str) -> str:
    if not CURRENCY.fullmatch(value or ""):
        raise serializers.ValidationError("Give an ISO 4217 code of three capital letters, e.g. EUR.")
    return value


def prefixes_validate(value: list[str]) -> list[str]:
    cleaned = []
    for prefix in value:
        prefix = prefix.strip().lstrip("+")
        if not DIGITS.fullmatch(prefix):
            raise serializers.ValidationError(f"{prefix!r} is not a prefix of 1 to 15 digits.")
        cleaned.append(prefix)
    if len(set(cleaned)) != len(cleaned):
        raise serializers.ValidationError("A prefix is listed twice.")
    return cleaned


# --- Tariffs and their decks -------------------------------------------------------------------


class TariffSerializer(serializers.ModelSerializer):
    rates_count = serializers.IntegerField(read_only=True, help_text="Rows of its rate deck, all versions.")
    grid_first_increment = serializers.IntegerField(min_value=1, max_value=rating.MAX_INCREMENT_SECONDS, default=60)
    grid_next_increment = serializers.IntegerField(min_value=1, max_value=rating.MAX_INCREMENT_SECONDS, default=60)

    class Meta:
        model = Tariff
        fields = [
            "id",
            "name",
            "kind",
            "currency",
            "is_default_cost",
            "grid_first_increment",
            "grid_next_increment",
            "rates_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_currency(self, value):
        return currency_validate(value)

    def validate(self, attrs):
        kind = attrs.get("kind", getattr(self.instance, "kind", TariffKind.PRICE))
        if attrs.get("is_default_cost", getattr(self.instance, "is_default_cost", False)):
            if kind != TariffKind.COST:
                raise serializers.ValidationError(
                    {"is_default_cost": "Only a supplier cost tariff can be the default."}
                )
            others = Tariff.objects.filter(is_default_cost=True)
            if self.instance is not None:
                others = others.exclude(pk=self.instance.pk)
            if others.exists():
                raise serializers.ValidationError(
                    {"is_default_cost": f"{others.first().name!r} is already the default cost tariff."}
                )
        return attrs


class TimeBandSerializer(serializers.ModelSerializer):
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6), allow_empty=False, help_text="0 Monday … 6 Sunday."
    )

    class Meta:
        model = TimeBand
        fields = ["id", "tariff", "name", "weekdays", "start", "end"]

    def validate_weekdays(self, value):
        if len(set(value)) != len(value):
            raise serializers.ValidationError("A weekday is listed twice.")
        return sorted(value)

    def validate_name(self, value):
        if not value.strip():
            raise serializers.ValidationError("Name the band, e.g. peak.")
        return value.strip()


class RateSerializer(serializers.ModelSerializer):
    increment = serializers.CharField(read_only=True, help_text="first/next seconds, e.g. 60/60.")

    class Meta:
        model = Rate
        fields = [
            "id",
            "tariff",
            "prefix",
            "destination",
            "service",
            "rate",
            "connect_fee",
            "increment",
            "first_increment",
            "next_increment",
            "min_charge",
            "effective_from",
            "time_band",
            "created_at",
        ]
        read_only_fields = fields


class RateDeckUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The rate-deck CSV: prefix,destination,rate,connect_fee,increment,…")


class RateDeckErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField(help_text="1-based line of the file (the header is line 1).")
    column = serializers.CharField(allow_null=True)
    reason = serializers.CharField()


class RatesImportResultSerializer(serializers.Serializer):
    imported = serializers.IntegerField(help_text="Rows written (0 on a dry run).")
    valid_rates = serializers.IntegerField(help_text="Good rows read from the file.")
    dry_run = serializers.BooleanField()
    errors = RateDeckErrorSerializer(many=True)


# --- Tariff classes and the grid ----------------------------------------------------------------


class TariffClassSerializer(serializers.ModelSerializer):
    prefixes = serializers.ListField(child=serializers.CharField(max_length=16), required=False, default=list)
    leg_rate = money(required=False, default=Decimal(0))

    class Meta:
        model = TariffClass
        fields = ["id", "tariff", "direction", "name", "prefixes", "leg_rate", "position"]

    def validate_prefixes(self, value):
        return prefixes_validate(value)

    def validate(self, attrs):
        instance = self.instance
        direction = attrs.get("direction", getattr(instance, "direction", None))
        if instance is not None and "tariff" in attrs and attrs["tariff"].pk != instance.tariff_id:
            raise serializers.ValidationError({"tariff": "A class cannot move to another tariff."})
        if instance is not None and direction != instance.direction:
            if (
                ClassRate.objects.filter(origination=instance).exists()
                or ClassRate.objects.filter(termination=instance).exists()
            ):
                raise serializers.ValidationError({"direction": "The class has grid cells; clear them first."})
        leg_rate = attrs.get("leg_rate")
        if instance is not None and leg_rate is not None and direction == Leg.ORIGINATION:
            lowest = ClassRate.objects.filter(origination=instance, rate__lt=leg_rate).aggregate(top=Max("rate"))
            if lowest["top"] is not None:
                raise serializers.ValidationError(
                    {"leg_rate": f"Cells of this row are priced below {leg_rate}; raise them first."}
                )
        return attrs


class GridCellSerializer(serializers.Serializer):
    origination = serializers.IntegerField(help_text="Origination class id (a row).")
    termination = serializers.IntegerField(help_text="Termination class id (a column).")
    rate = serializers.CharField(
        allow_null=True, allow_blank=True, help_text="Total price per minute; null or empty: no price for the pair."
    )


class GridWriteSerializer(serializers.Serializer):
    cells = GridCellSerializer(
        many=True, help_text="The whole grid: pairs left out lose their price (PUT replaces the grid)."
    )


class GridOriginationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefixes = serializers.ListField(child=serializers.CharField())
    leg_rate = serializers.DecimalField(max_digits=20, decimal_places=6)


class GridTerminationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefixes = serializers.ListField(child=serializers.CharField())


class GridCellReadSerializer(serializers.Serializer):
    termination_id = serializers.IntegerField()
    termination = serializers.CharField()
    rate = serializers.DecimalField(max_digits=20, decimal_places=6, allow_null=True, help_text="null: no price.")


class GridRowSerializer(serializers.Serializer):
    origination_id = serializers.IntegerField()
    origination = serializers.CharField()
    leg_rate = serializers.DecimalField(max_digits=20, decimal_places=6)
    cells = GridCellReadSerializer(many=True, help_text="One per termination class, in their order.")


class GridSerializer(serializers.Serializer):
    """A tariff's class grid: rows are origination classes, columns termination classes."""

    tariff_id = serializers.IntegerField()
    currency = serializers.CharField()
    first_increment = serializers.IntegerField(help_text="Grid calls are billed in first/next second blocks.")
    next_increment = serializers.IntegerField()
    origination = GridOriginationSerializer(many=True)
    termination = GridTerminationSerializer(many=True)
    rows = GridRowSerializer(many=True)


class GridAverageCellSerializer(serializers.Serializer):
    origination = serializers.CharField()
    termination = serializers.CharField(help_text="IVR: calls that ended on the operator's own IVR.")
    minutes = serializers.DecimalField(max_digits=20, decimal_places=6)
    rate = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="The current rate of the cell.")


class GridAverageSerializer(serializers.Serializer):
    tariff_id = serializers.IntegerField()
    currency = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    average = serializers.DecimalField(
        max_digits=20,
        decimal_places=6,
        allow_null=True,
        help_text="Flat per-minute figure: the current cell rates weighted by the period's freephone minutes; "
        "null when there was no traffic.",
    )
    minutes = serializers.DecimalField(max_digits=20, decimal_places=6)
    unmatched_minutes = serializers.DecimalField(
        max_digits=20, decimal_places=6, help_text="Traffic whose class or cell no longer exists (left out)."
    )
    cells = GridAverageCellSerializer(many=True)


# --- Trunks, packages, freephone numbers, CDR formats ------------------------------------------


class TrunkSerializer(serializers.ModelSerializer):
    class Meta:
        model = Trunk
        fields = ["id", "name", "cost_tariff", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_cost_tariff(self, value):
        if value.kind != TariffKind.COST:
            raise serializers.ValidationError("A trunk is priced by a supplier cost tariff (kind cost).")
        return value


class PackageTierSerializer(serializers.Serializer):
    up_to_minutes = serializers.DecimalField(
        max_digits=12, decimal_places=2, allow_null=True, help_text="Cumulative minutes of the period; null: no bound."
    )
    rate = money(help_text="Per minute within this tier.")


class MinutePackageSerializer(serializers.ModelSerializer):
    prefixes = serializers.ListField(child=serializers.CharField(max_length=16), allow_empty=False)
    included_minutes = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal(0), default=0)
    tiers = PackageTierSerializer(many=True, required=False, default=list)

    class Meta:
        model = MinutePackage
        fields = ["id", "name", "prefixes", "included_minutes", "tiers", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate_prefixes(self, value):
        return prefixes_validate(value)

    def validate(self, attrs):
        tiers = attrs.get("tiers", None)
        if tiers is None:
            return attrs
        try:
            rating.MinutePackage(
                name=attrs.get("name", "package"),
                prefixes=frozenset(attrs.get("prefixes", getattr(self.instance, "prefixes", []))),
                included_minutes=Decimal(attrs.get("included_minutes", getattr(self.instance, "included_minutes", 0))),
                tiers=tuple(rating.PackageTier(up_to_minutes=t["up_to_minutes"], rate=t["rate"]) for t in tiers),
            )
        except (TypeError, ValueError) as exc:
            raise serializers.ValidationError({"tiers": str(exc)}) from exc
        attrs["tiers"] = [
            {"up_to_minutes": None if t["up_to_minutes"] is None else str(t["up_to_minutes"]), "rate": str(t["rate"])}
            for t in tiers
        ]
        return attrs


class FreephoneNumberSerializer(serializers.ModelSerializer):
    class Meta:
        model = FreephoneNumber
        fields = ["id", "number", "account", "created_at"]
        read_only_fields = ["created_at"]

    def validate_number(self, value):
        value = value.strip().lstrip("+")
        if not DIGITS.fullmatch(value):
            raise serializers.ValidationError("Give the freephone number as digits, e.g. 8800123456.")
        return value


class CdrFormatSerializer(serializers.ModelSerializer):
    columns = serializers.DictField(
        help_text="freephone: {field: 0-based column (negative from the end)}; generic: {field: header name}."
    )

    class Meta:
        model = CdrFormat
        fields = ["id", "name", "kind", "columns", "delimiter", "has_header", "time_format", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs):
        kind = attrs.get("kind", getattr(self.instance, "kind", None))
        columns = attrs.get("columns", getattr(self.instance, "columns", {}))
        delimiter = attrs.get("delimiter", getattr(self.instance, "delimiter", ","))
        try:
            # The parsers check a mapping as soon as they are called, before reading anything.
            if kind == CdrFormatKind.FREEPHONE:
                csvformats.parse_freephone_cdrs("", columns, delimiter=delimiter)
            else:
                if not all(isinstance(v, str) and v for v in columns.values()):
                    raise ValueError("a generic mapping names a header for each field: {field: header}")
                csvformats.parse_mapped_cdr_csv("", columns, delimiter=delimiter)
        except ValueError as exc:
            raise serializers.ValidationError({"columns": str(exc)}) from exc
        return attrs


# --- Quotes ------------------------------------------------------------------------------------


class QuoteRequestSerializer(serializers.Serializer):
    tariff = serializers.IntegerField(required=False, help_text="Tariff id (staff only); or give `account`.")
    account = serializers.IntegerField(required=False, help_text="Quote with this account's tariff.")
    to = serializers.CharField(max_length=33, help_text="The called number, E.164 (a leading + is ignored).")
    duration = serializers.IntegerField(min_value=0, max_value=10_000_000, default=0, help_text="Answered seconds.")
    at = serializers.DateTimeField(required=False, help_text="The call's start (default: now).")
    service = serializers.ChoiceField(choices=Service.choices, default=Service.VOICE)
    units = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1, help_text="SMS parts / USSD events.")

    def validate_to(self, value):
        digits = value.strip().lstrip("+")
        if not DIGITS.fullmatch(digits):
            raise serializers.ValidationError("Give the number as up to 15 digits, e.g. +34911234567.")
        return digits

    def validate(self, attrs):
        if ("tariff" in attrs) == ("account" in attrs):
            raise serializers.ValidationError({"tariff": "Give exactly one of tariff or account."})
        return attrs


class QuoteSerializer(serializers.Serializer):
    tariff = serializers.IntegerField()
    matched_prefix = serializers.CharField()
    destination = serializers.CharField()
    service = serializers.CharField()
    billed_seconds = serializers.IntegerField()
    units = serializers.IntegerField()
    rate = serializers.CharField(help_text="Per minute (voice) or per unit.")
    increment = serializers.CharField()
    connect_fee = serializers.CharField()
    total = serializers.CharField(help_text="Exact to 6 decimal places.")
    currency = serializers.CharField()


# --- Accounts and the books --------------------------------------------------------------------


class AccountSerializer(serializers.ModelSerializer):
    currency = serializers.CharField(max_length=3, required=False, help_text="Default: the operator's currency.")
    credit_limit = money(required=False, default=Decimal(0))
    available = serializers.DecimalField(max_digits=20, decimal_places=6, read_only=True)
    packages = serializers.PrimaryKeyRelatedField(many=True, queryset=MinutePackage.objects.all(), required=False)

    class Meta:
        model = Account
        fields = [
            "id",
            "name",
            "code",
            "customer",
            "currency",
            "kind",
            "credit_limit",
            "tariff",
            "packages",
            "balance",
            "reserved",
            "available",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["balance", "reserved", "created_at", "updated_at"]

    def validate_currency(self, value):
        if self.instance is not None and value != self.instance.currency:
            raise serializers.ValidationError("An account's currency cannot change; open another account.")
        return currency_validate(value)

    def validate_code(self, value):
        if self.instance is not None and value != self.instance.code:
            raise serializers.ValidationError("CDRs name the account by its code; it cannot change.")
        if not value.strip():
            raise serializers.ValidationError("Give the code CDRs name the account by.")
        return value.strip()

    def validate_tariff(self, value):
        if value is not None and value.kind != TariffKind.PRICE:
            raise serializers.ValidationError("An account is charged by a customer price tariff (kind price).")
        return value

    def validate(self, attrs):
        tariff = attrs.get("tariff", getattr(self.instance, "tariff", None))
        currency = attrs.get("currency", getattr(self.instance, "currency", None))
        if tariff is not None and currency is not None and tariff.currency != currency:
            raise serializers.ValidationError(
                {"tariff": f"The tariff is in {tariff.currency}, the account in {currency}."}
            )
        return attrs


class LedgerEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = LedgerEntry
        fields = ["id", "account", "kind", "amount", "idempotency_key", "description", "cdr", "created_at"]
        read_only_fields = fields


class TopupSerializer(serializers.Serializer):
    amount = money(min_value=Decimal("0.000001"), help_text="Positive; the ledger records it as a credit.")
    idempotency_key = serializers.CharField(
        max_length=180, help_text="Your unique id of this top-up: the same key twice tops up once."
    )
    description = serializers.CharField(max_length=300, required=False, default="Top-up")


class TopupResultSerializer(serializers.Serializer):
    created = serializers.BooleanField(help_text="false: this key was seen before and nothing new was posted.")
    entry = LedgerEntrySerializer()
    account = AccountSerializer()


class ReservationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Reservation
        fields = [
            "id",
            "account",
            "amount",
            "committed_amount",
            "status",
            "idempotency_key",
            "expires_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


# --- CDRs ----------------------------------------------------------------------------------------


class CdrSerializer(serializers.ModelSerializer):
    leg = serializers.CharField(read_only=True, help_text="origination (A-leg) or termination (B-leg).")
    margin = serializers.DecimalField(
        max_digits=20, decimal_places=6, read_only=True, allow_null=True, help_text="price - cost; null when unknown."
    )

    class Meta:
        model = Cdr
        fields = [
            "id",
            "source",
            "source_id",
            "service",
            "leg",
            "correlation_id",
            "account_code",
            "account",
            "caller",
            "callee",
            "start",
            "duration",
            "billsec",
            "units",
            "status",
            "unrated_reason",
            "matched_prefix",
            "destination",
            "billed_seconds",
            "package_seconds",
            "trunk",
            "price",
            "cost",
            "margin",
            "currency",
            "extra",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


# --- CDR ingestion (JSON batches) ------------------------------------------------------------------

API_CDR_SOURCE = "api"
MAX_CDR_BATCH = 10_000
LEG_CHOICES = (*Leg.values, "combined")
SERVICES = frozenset(Service.values)


class CdrRecordSerializer(serializers.Serializer):
    """One CDR of a batch (documentation of what `cdr_record_parse` accepts; the checks are there)."""

    source_id = serializers.CharField(max_length=120, help_text="Your id of the record: the idempotency key.")
    account = serializers.CharField(max_length=80, required=False, help_text="Account code (default: none).")
    caller = serializers.CharField(max_length=32, required=False)
    callee = serializers.CharField(max_length=32, help_text="The called number (or the freephone number dialled).")
    start = serializers.DateTimeField(help_text="ISO 8601; without an offset, the operator's local time.")
    duration = serializers.IntegerField(min_value=0, required=False, help_text="Seconds, ringing included.")
    billsec = serializers.IntegerField(min_value=0, required=False, help_text="Answered seconds (default: duration).")
    service = serializers.ChoiceField(choices=Service.choices, required=False, default=Service.VOICE)
    units = serializers.IntegerField(min_value=0, required=False, help_text="SMS parts or USSD events.")
    leg = serializers.CharField(
        required=False,
        default=Leg.ORIGINATION,
        help_text="origination, termination, or combined (a freephone platform record holding both legs).",
    )
    correlation_id = serializers.CharField(max_length=120, required=False, help_text="Ties the legs of one call.")
    trunk = serializers.CharField(max_length=80, required=False, help_text="The supplier trunk the call left by.")
    forwarded_to = serializers.CharField(max_length=32, required=False, help_text="Freephone: where it was routed.")
    service_code = serializers.CharField(max_length=32, required=False)
    reported_cost = serializers.DecimalField(max_digits=20, decimal_places=6, required=False)


class CdrBatchSerializer(serializers.Serializer):
    records = CdrRecordSerializer(many=True, help_text=f"1 to {MAX_CDR_BATCH} records.")


class CdrRejectionSerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="0-based index of the record in `records`.")
    field = serializers.CharField(allow_null=True, help_text="The bad field (null: the whole record).")
    reason = serializers.CharField()


class CdrLegSummarySerializer(serializers.Serializer):
    cdrs = serializers.IntegerField()
    charged = serializers.DictField(child=serializers.CharField())


class CdrIngestResultSerializer(serializers.Serializer):
    received = serializers.IntegerField()
    imported = serializers.IntegerField(help_text="New CDRs stored (rated or kept unrated).")
    duplicates = serializers.IntegerField(help_text="Seen before (same source_id): not stored or charged again.")
    unrated = serializers.IntegerField(help_text="Stored without a price (no rate, unknown account…).")
    rejected = CdrRejectionSerializer(many=True)
    charged = serializers.DictField(child=serializers.CharField(), help_text="Total charged per currency.")
    cost = serializers.DictField(child=serializers.CharField(), help_text="Total supplier cost per currency.")
    legs = serializers.DictField(
        child=CdrLegSummarySerializer(), help_text="Per leg (origination, termination): CDRs and what they charged."
    )


_TEXT_LIMITS = {
    "source_id": 120,
    "account": 80,
    "caller": 32,
    "callee": 32,
    "correlation_id": 120,
    "trunk": 80,
    "forwarded_to": 32,
    "service_code": 32,
}
_INTEGERS = ("duration", "billsec", "units")
_RECORD_FIELDS = frozenset(CdrRecordSerializer._declared_fields)
_PARSED_FIELDS = frozenset(csvformats.ParsedCdr.__dataclass_fields__)
_MAX_SECONDS = 2_147_483_647


def _start_parse(value, zone) -> datetime | str:
    if not isinstance(value, str):
        return "give an ISO 8601 date-time string"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return f"not an ISO 8601 date-time: {value[:40]!r}"
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def cdr_record_parse(item, position: int, zone) -> "csvformats.ParsedCdr | list[dict]":
    """One record of a JSON batch → a ParsedCdr, or the problems with it, each naming its field.

    Plain Python rather than a DRF serializer: a batch holds up to 10,000 records and single-record
    posts are the hot path, so each record is checked in a few microseconds.
    """
    if not isinstance(item, dict):
        return [{"position": position, "field": None, "reason": "a record is a JSON object"}]
    problems = [
        {"position": position, "field": name, "reason": "unknown field"} for name in item if name not in _RECORD_FIELDS
    ]

    def bad(name: str, reason: str) -> None:
        problems.append({"position": position, "field": name, "reason": reason})

    values: dict = {}
    for name, limit in _TEXT_LIMITS.items():
        value = item.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            bad(name, "give a string")
        elif len(value) > limit:
            bad(name, f"at most {limit} characters")
        else:
            values[name] = value.strip()
    for name in ("source_id", "callee"):
        if not values.get(name) and not any(p["field"] == name for p in problems):
            bad(name, "required")
    for name in _INTEGERS:
        value = item.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            bad(name, "give a whole number of seconds" if name != "units" else "give a whole number")
        elif not 0 <= value <= _MAX_SECONDS:
            bad(name, f"must be between 0 and {_MAX_SECONDS}")
        else:
            values[name] = value
    if (
        "duration" not in values
        and "billsec" not in values
        and not any(p["field"] in ("duration", "billsec") for p in problems)
    ):
        bad("billsec", "give billsec or duration")
    if "start" not in item:
        bad("start", "required")
    else:
        start = _start_parse(item["start"], zone)
        if isinstance(start, str):
            bad("start", start)
        else:
            values["start"] = start
    service = item.get("service", Service.VOICE)
    if service not in SERVICES:
        bad("service", f"one of {', '.join(Service.values)}")
    leg = item.get("leg", Leg.ORIGINATION)
    if leg not in LEG_CHOICES:
        bad("leg", f"one of {', '.join(LEG_CHOICES)}")
    reported_cost = item.get("reported_cost")
    if reported_cost is not None:
        try:
            reported_cost = Decimal(reported_cost) if not isinstance(reported_cost, (bool, float)) else None
        except (InvalidOperation, TypeError, ValueError):
            reported_cost = None
        if reported_cost is None or not reported_cost.is_finite():
            bad("reported_cost", "give a decimal string such as 11.05")
    if problems:
        return problems
    duration = values.get("duration", values.get("billsec"))
    billsec = values.get("billsec", duration)
    if billsec > duration:
        return [{"position": position, "field": "billsec", "reason": "billsec must not exceed duration"}]
    fields = {
        "line": position,
        "source_id": values["source_id"],
        "caller": values.get("caller", ""),
        "callee": values["callee"],
        "start": values["start"],
        "duration": duration,
        "billsec": billsec,
        "account": values.get("account", ""),
        "leg": leg,
        "service": service,
        "units": values.get("units", 0),
        "correlation_id": values.get("correlation_id", ""),
        "trunk": values.get("trunk", ""),
        "forwarded_to": values.get("forwarded_to") or None,
        "service_code": values.get("service_code") or None,
        "reported_cost": reported_cost,
    }
    return csvformats.ParsedCdr(**{k: v for k, v in fields.items() if k in _PARSED_FIELDS})


def cdr_batch_parse(data, *, zone) -> tuple[list, list[dict], int]:
    """The envelope `{"records": [...]}` checked as a whole (else 400), then each record on its own.

    Returns (good records as ParsedCdr, problems of the bad ones, how many records were received).
    """
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise serializers.ValidationError({"records": ['Send {"records": [...]}, a list of CDR objects.']})
    if not 1 <= len(records) <= MAX_CDR_BATCH:
        raise serializers.ValidationError({"records": [f"Send 1 to {MAX_CDR_BATCH} records, got {len(records)}."]})
    good, rejected = [], []
    for position, item in enumerate(records):
        parsed = cdr_record_parse(item, position, zone)
        if isinstance(parsed, list):
            rejected.extend(parsed)
        else:
            good.append(parsed)
    return good, rejected, len(records)


def cdr_ingest_summary(*, received: int, rejected: list[dict], summary: dict | None) -> dict:
    """The answer to a batch: the ingest service's summary, with the records received and the ones refused here."""
    summary = summary or {}
    return {
        "received": received,
        "imported": summary.get("imported", 0),
        "duplicates": summary.get("duplicates", 0),
        "unrated": summary.get("unrated", 0),
        "rejected": rejected,
        "charged": summary.get("charged", {}),
        "cost": summary.get("cost", {}),
        "legs": summary.get("legs", {}),
    }


def cdr_batch_rejected_error(result: dict) -> dict:
    """The 400 error of a batch whose every record is bad: each problem under `records[i].field`, and the summary."""
    fields: dict = {}
    for problem in result["rejected"]:
        fields.setdefault(f"records[{problem['position']}].{problem['field'] or 'record'}", []).append(
            problem["reason"]
        )
    return {
        "code": "invalid",
        "message": "Every record of the batch is bad; nothing was imported.",
        "fields": fields,
        "summary": result,
    }
