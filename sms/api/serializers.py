from decimal import Decimal

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..choices import EventStatus, ListKind, MessageStatus, SpamRuleKind
from ..models import (
    CallbackAttempt,
    FraudLimit,
    Gateway,
    IncomingMessage,
    ListEntry,
    Message,
    MessageEvent,
    NumberPrefix,
    Route,
    SmsClient,
    SpamRule,
)
from ..services.callbacks import callback_url_problem


def choice(choices, **kwargs) -> serializers.ChoiceField:
    """A choice field whose values the schema lists in its description, not as a shared enum component: several
    apps and serializers name different choice sets `status` or `kind`, which the schema's enum naming cannot
    tell apart without settings."""

    @extend_schema_field({"type": "string", "description": "One of: " + ", ".join(choices.values) + "."})
    class DescribedChoiceField(serializers.ChoiceField):
        pass

    return DescribedChoiceField(choices=choices.choices, **kwargs)


def _callback_url_checked(url: str) -> str:
    """A client's callback URL: http(s), no credentials, not the platform's own network (sms.services.callbacks)."""
    problem = callback_url_problem(url, resolve=True) if url else None
    if problem:
        raise serializers.ValidationError(problem)
    return url


# --- sending (documentation of the request; the service validates it, fast, for up to 10,000 recipients) ---


class SendMessageItemSerializer(serializers.Serializer):
    to = serializers.CharField(help_text="E.164, e.g. +34612345678 (00… and spaces are accepted).")
    text = serializers.CharField(required=False, help_text="GSM 03.38 or any Unicode (sent as UCS-2).")
    callback_url = serializers.URLField(required=False)
    validity = serializers.IntegerField(required=False, min_value=60, max_value=604800, help_text="Seconds.")
    scheduled_at = serializers.DateTimeField(required=False)
    client_reference = serializers.CharField(required=False, max_length=100)

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(required=False, help_text="One of the client's sender ids.")
        return fields


class SendRequestSerializer(serializers.Serializer):
    """One message (``to`` a string), one text to many (``to`` a list), or ``messages`` each with its own fields."""

    to = serializers.JSONField(required=False, help_text="A number, or a list of up to 10,000 numbers.")
    text = serializers.CharField(required=False)
    callback_url = serializers.URLField(required=False, help_text="Overrides the client's callback URL.")
    validity = serializers.IntegerField(required=False, min_value=60, max_value=604800, help_text="Seconds; 48 h.")
    scheduled_at = serializers.DateTimeField(required=False, help_text="Send later (ISO 8601).")
    client_reference = serializers.CharField(required=False, max_length=100)
    messages = SendMessageItemSerializer(
        many=True, required=False, help_text="Up to 10,000; fields above are defaults."
    )

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(required=False, help_text="Sender id; the client's first by default.")
        return fields


class AcceptedMessageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    to = serializers.CharField()
    status = choice(MessageStatus)
    encoding = serializers.CharField()
    parts = serializers.IntegerField()
    length = serializers.IntegerField()
    price = serializers.DecimalField(max_digits=20, decimal_places=6)
    error_code = serializers.CharField()
    error_description = serializers.CharField()
    client_reference = serializers.CharField()
    scheduled_at = serializers.DateTimeField(allow_null=True)
    valid_until = serializers.DateTimeField()

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField()
        return fields


class SendResponseSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    currency = serializers.CharField()
    total_price = serializers.DecimalField(max_digits=20, decimal_places=6, help_text="Of the accepted messages.")
    accepted = serializers.IntegerField()
    rejected = serializers.IntegerField()
    messages = AcceptedMessageSerializer(many=True)


def accepted_as_json(accepted) -> dict:
    """The answer to a send request, built without serializers: it may hold 10,000 messages."""
    messages = []
    rejected = 0
    for m in accepted.messages:
        if m.status == MessageStatus.REJECTED:
            rejected += 1
        messages.append(
            {
                "id": m.pk,
                "to": m.destination,
                "from": m.sender,
                "status": m.status,
                "encoding": m.encoding,
                "parts": m.parts,
                "length": m.length,
                "price": str(m.price),
                "error_code": m.error_code,
                "error_description": m.error_description,
                "client_reference": m.client_reference,
                "scheduled_at": m.scheduled_at.isoformat() if m.scheduled_at else None,
                "valid_until": m.valid_until.isoformat(),
            }
        )
    return {
        "request_id": str(accepted.request_id),
        "currency": accepted.currency,
        "total_price": str(accepted.total_price),
        "accepted": len(messages) - rejected,
        "rejected": rejected,
        "messages": messages,
    }


# --- messages ---


class MessageSerializer(serializers.ModelSerializer):
    to = serializers.CharField(source="destination")
    status = choice(MessageStatus, read_only=True)
    customer = serializers.IntegerField(source="customer_id")
    gateway = serializers.IntegerField(source="gateway_id", allow_null=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "customer",
            "to",
            "text",
            "encoding",
            "length",
            "parts",
            "price",
            "currency",
            "status",
            "error_code",
            "error_description",
            "smsc_message_ids",
            "client_reference",
            "callback_url",
            "country",
            "mobile_operator",
            "gateway",
            "scheduled_at",
            "valid_until",
            "submitted_at",
            "done_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_fields(self):
        fields = super().get_fields()
        fields["from"] = serializers.CharField(source="sender", read_only=True)
        return fields


class CallbackAttemptSerializer(serializers.ModelSerializer):
    batch = serializers.IntegerField(source="batch_id")

    class Meta:
        model = CallbackAttempt
        fields = ["batch", "number", "url", "status_code", "error", "duration_ms", "next_retry_at", "created_at"]
        read_only_fields = fields


class MessageEventSerializer(serializers.ModelSerializer):
    status = choice(EventStatus, read_only=True)
    callback_state = serializers.SerializerMethodField()
    callback_attempts = serializers.SerializerMethodField()

    class Meta:
        model = MessageEvent
        fields = ["status", "error_code", "error_description", "created_at", "callback_state", "callback_attempts"]
        read_only_fields = fields

    def get_callback_state(self, event) -> str | None:
        return event.callback_batch.state if event.callback_batch_id else None

    @staticmethod
    def _attempts(event) -> list:
        return list(event.callback_batch.attempt_log.all()) if event.callback_batch_id else []

    def get_callback_attempts(self, event) -> list[dict]:
        return CallbackAttemptSerializer(self._attempts(event), many=True).data


class MessageDetailSerializer(MessageSerializer):
    events = MessageEventSerializer(many=True, read_only=True)
    # The staff's view adds what the operator pays; clients do not see it.

    class Meta(MessageSerializer.Meta):
        fields = MessageSerializer.Meta.fields + ["events"]
        read_only_fields = fields


class StaffMessageDetailSerializer(MessageDetailSerializer):
    class Meta(MessageDetailSerializer.Meta):
        fields = MessageDetailSerializer.Meta.fields + ["cost", "route", "tried_gateways", "request_id"]
        read_only_fields = fields


class MessagesSummarySerializer(serializers.Serializer):
    messages = serializers.IntegerField()
    parts = serializers.IntegerField()
    credit = serializers.DecimalField(max_digits=20, decimal_places=6)
    pending = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())


# --- the operator's set-up ---


class SmsClientSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="customer.name", read_only=True)
    currency = serializers.CharField(source="account.currency", read_only=True)
    balance = serializers.DecimalField(source="account.balance", max_digits=20, decimal_places=6, read_only=True)
    available = serializers.DecimalField(source="account.available", max_digits=20, decimal_places=6, read_only=True)

    class Meta:
        model = SmsClient
        fields = [
            "id",
            "customer",
            "name",
            "account",
            "currency",
            "balance",
            "available",
            "sender_ids",
            "allowed_ips",
            "tps_limit",
            "max_queued",
            "duplicate_window_s",
            "callback_url",
            "callback_secret",
            "default_route",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["customer", "account", "callback_secret", "created_at", "updated_at"]

    def validate_callback_url(self, url: str) -> str:
        return _callback_url_checked(url)

    def validate_default_route(self, route):
        if (
            route is not None
            and route.client_id is not None
            and (self.instance is None or route.client_id != self.instance.pk)
        ):
            raise serializers.ValidationError("Choose an operator route or one of this client's own routes.")
        return route


class SmsClientCreateSerializer(serializers.ModelSerializer):
    name = serializers.CharField(max_length=200)
    subdomain = serializers.CharField(max_length=63, required=False, allow_blank=True)
    admin_email = serializers.EmailField(required=False, help_text="Its first login (gets no password: reset link).")
    currency = serializers.CharField(max_length=3, required=False, help_text="Of its account; the operator's.")
    credit = serializers.DecimalField(max_digits=20, decimal_places=6, required=False, min_value=Decimal(0))
    credit_limit = serializers.DecimalField(max_digits=20, decimal_places=6, required=False, min_value=Decimal(0))

    class Meta:
        model = SmsClient
        fields = [
            "name",
            "subdomain",
            "admin_email",
            "currency",
            "credit",
            "credit_limit",
            "sender_ids",
            "allowed_ips",
            "tps_limit",
            "max_queued",
            "duplicate_window_s",
            "callback_url",
        ]

    def validate_callback_url(self, url: str) -> str:
        return _callback_url_checked(url)


class GatewaySerializer(serializers.ModelSerializer):
    password = serializers.CharField(write_only=True, max_length=8, help_text="Write-only.")
    state = serializers.SerializerMethodField(help_text="bound, connecting, unbound, or unknown (no submitter).")
    stats = serializers.SerializerMethodField(help_text="Throughput, queue depth… as the submitter last reported.")

    class Meta:
        model = Gateway
        fields = [
            "id",
            *Gateway.SETTINGS,
            "state",
            "stats",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def _live(self, gateway) -> dict:
        return self.context.get("gateway_states", {}).get(gateway.pk, {})

    def get_state(self, gateway) -> str:
        return self._live(gateway).get("state", "unknown") if gateway.enabled else "disabled"

    def get_stats(self, gateway) -> dict:
        live = self._live(gateway)
        return {
            k: live[k] for k in ("queued", "in_flight", "outstanding", "throughput_per_s", "submitted") if k in live
        }


class RouteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Route
        fields = [
            "id",
            "name",
            "client",
            "prefix",
            "country",
            "mobile_operator",
            "priority",
            "gateway",
            "price_per_part",
            "cost_per_part",
            "enabled",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class NumberPrefixSerializer(serializers.ModelSerializer):
    class Meta:
        model = NumberPrefix
        fields = ["id", "prefix", "country", "mobile_operator", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class ListEntrySerializer(serializers.ModelSerializer):
    kind = choice(ListKind)

    class Meta:
        model = ListEntry
        fields = ["id", "kind", "number", "client", "note", "created_at"]
        read_only_fields = ["created_at"]

    def validate_number(self, value: str) -> str:
        from ..numbers import InvalidNumber, number_parse

        try:
            return number_parse(value).e164
        except InvalidNumber as exc:
            raise serializers.ValidationError(str(exc)) from exc


class ListImportRequestSerializer(serializers.Serializer):
    kind = choice(ListKind)
    client = serializers.PrimaryKeyRelatedField(queryset=SmsClient.objects.all(), required=False, allow_null=True)
    file = serializers.FileField(required=False, help_text="CSV: a number per line (optional note in column 2).")
    note = serializers.CharField(required=False, allow_blank=True, max_length=200)
    dry_run = serializers.BooleanField(required=False, default=False)


class ListImportErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    value = serializers.CharField()
    reason = serializers.CharField()


class ListImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    existing = serializers.IntegerField()
    dry_run = serializers.BooleanField()
    errors = ListImportErrorSerializer(many=True)


class SpamRuleSerializer(serializers.ModelSerializer):
    kind = choice(SpamRuleKind, required=False)

    class Meta:
        model = SpamRule
        fields = ["id", "name", "kind", "pattern", "enabled", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs):
        rule = SpamRule(**{**({} if self.instance is None else {"kind": self.instance.kind}), **attrs})
        if self.instance is not None:
            rule.pattern = attrs.get("pattern", self.instance.pattern)
        from django.core.exceptions import ValidationError

        try:
            rule.clean()
        except ValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs


class FraudLimitSerializer(serializers.ModelSerializer):
    class Meta:
        model = FraudLimit
        fields = [
            "id",
            "name",
            "scope",
            "metric",
            "period",
            "limit",
            "client",
            "mobile_operator",
            "enabled",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class IncomingMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = IncomingMessage
        fields = ["id", "customer", "gateway", "source", "destination", "text", "is_stop", "created_at"]
        read_only_fields = fields
