import django_filters

from ..choices import ListKind, MessageStatus
from ..models import IncomingMessage, ListEntry, Message, Route


class MessageFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=MessageStatus.choices)
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte", label="Created at or after")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt", label="Created before")
    to = django_filters.CharFilter(method="filter_to", label="Destination (E.164; + optional)")
    client_reference = django_filters.CharFilter()
    request_id = django_filters.UUIDFilter()

    class Meta:
        model = Message
        fields = ["status", "since", "until", "to", "client_reference", "request_id", "customer"]

    def filter_to(self, queryset, name, value):
        value = value.strip().replace(" ", "")
        return queryset.filter(destination="+" + value.lstrip("+"))


class RouteFilterSet(django_filters.FilterSet):
    class Meta:
        model = Route
        fields = ["client", "gateway", "country", "enabled"]


class ListEntryFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ListKind.choices)
    number = django_filters.CharFilter(method="filter_number")

    class Meta:
        model = ListEntry
        fields = ["kind", "client", "number"]

    def filter_number(self, queryset, name, value):
        return queryset.filter(number="+" + value.strip().lstrip("+"))


class IncomingMessageFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = IncomingMessage
        fields = ["customer", "is_stop", "source", "since", "until"]
