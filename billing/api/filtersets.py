"""Query filters of the billing API (django-filter), one FilterSet per list endpoint.

Foreign keys are filtered by id with plain number filters, not choice filters: a choice filter would
validate the id against the whole table and so tell a customer which ids exist beyond its own rows.
"""

from datetime import UTC, datetime

import django_filters
from django.db.models import Exists, OuterRef, Q, Value
from django.db.models.functions import Coalesce

from ..choices import AccountKind, CdrStatus, EntryKind, Leg, ReservationStatus, Service, TariffKind
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

_BEFORE_EVERYTHING = datetime(1, 1, 1, tzinfo=UTC)


class TariffFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=TariffKind.choices)
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Tariff
        fields = ["kind", "currency", "is_default_cost", "name"]


class RateFilterSet(django_filters.FilterSet):
    prefix = django_filters.CharFilter(lookup_expr="startswith", help_text="Prefixes starting with these digits.")
    destination = django_filters.CharFilter(lookup_expr="icontains")
    service = django_filters.ChoiceFilter(choices=Service.choices)
    time_band = django_filters.CharFilter()
    effective_at = django_filters.IsoDateTimeFilter(
        method="filter_effective_at",
        help_text="Only the versions in force at this ISO time: per prefix, service and time band the one with the "
        "latest effective_from not after it.",
    )
    effective_from_after = django_filters.IsoDateTimeFilter(field_name="effective_from", lookup_expr="gte")
    effective_from_before = django_filters.IsoDateTimeFilter(field_name="effective_from", lookup_expr="lt")

    class Meta:
        model = Rate
        fields = ["prefix", "destination", "service", "time_band"]

    def filter_effective_at(self, queryset, name, value):
        # A version is superseded at `value` when a later version of the same series is already effective then.
        newer = Rate.objects.filter(
            tariff=OuterRef("tariff"),
            prefix=OuterRef("prefix"),
            service=OuterRef("service"),
            time_band=OuterRef("time_band"),
            effective_from__lte=value,
            effective_from__gt=Coalesce(OuterRef("effective_from"), Value(_BEFORE_EVERYTHING)),
        )
        return queryset.filter(Q(effective_from__isnull=True) | Q(effective_from__lte=value)).filter(~Exists(newer))


class TimeBandFilterSet(django_filters.FilterSet):
    tariff = django_filters.NumberFilter(field_name="tariff_id")

    class Meta:
        model = TimeBand
        fields = ["tariff", "name"]


class TariffClassFilterSet(django_filters.FilterSet):
    tariff = django_filters.NumberFilter(field_name="tariff_id")
    direction = django_filters.ChoiceFilter(choices=Leg.choices)

    class Meta:
        model = TariffClass
        fields = ["tariff", "direction", "name"]


class TrunkFilterSet(django_filters.FilterSet):
    cost_tariff = django_filters.NumberFilter(field_name="cost_tariff_id")

    class Meta:
        model = Trunk
        fields = ["name", "cost_tariff"]


class MinutePackageFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = MinutePackage
        fields = ["name"]


class FreephoneNumberFilterSet(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id")
    number = django_filters.CharFilter(lookup_expr="startswith")

    class Meta:
        model = FreephoneNumber
        fields = ["account", "number"]


class CdrFormatFilterSet(django_filters.FilterSet):
    class Meta:
        model = CdrFormat
        fields = ["kind", "name"]


class AccountFilterSet(django_filters.FilterSet):
    customer = django_filters.NumberFilter(field_name="customer_id")
    tariff = django_filters.NumberFilter(field_name="tariff_id")
    kind = django_filters.ChoiceFilter(choices=AccountKind.choices)
    operator_own = django_filters.BooleanFilter(
        field_name="customer", lookup_expr="isnull", help_text="true: the operator's own accounts only."
    )

    class Meta:
        model = Account
        fields = ["customer", "tariff", "kind", "currency", "code"]


class LedgerEntryFilterSet(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id")
    kind = django_filters.ChoiceFilter(choices=EntryKind.choices)
    created_from = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_to = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    date = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date", help_text="Entries of this day (UTC)."
    )

    class Meta:
        model = LedgerEntry
        fields = ["account", "kind", "idempotency_key"]


class ReservationFilterSet(django_filters.FilterSet):
    account = django_filters.NumberFilter(field_name="account_id")
    status = django_filters.ChoiceFilter(choices=ReservationStatus.choices)

    class Meta:
        model = Reservation
        fields = ["account", "status"]


class CdrFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=CdrStatus.choices, help_text="`unrated`: the ones waiting for a rate.")
    account = django_filters.NumberFilter(field_name="account_id")
    service = django_filters.ChoiceFilter(choices=Service.choices)
    leg = django_filters.ChoiceFilter(choices=Leg.choices)
    start_from = django_filters.IsoDateTimeFilter(field_name="start", lookup_expr="gte")
    start_to = django_filters.IsoDateTimeFilter(field_name="start", lookup_expr="lt")

    class Meta:
        model = Cdr
        fields = ["status", "account", "service", "leg", "correlation_id", "source", "source_id", "account_code"]
