"""The SMS REST API (`/api/v1/sms/` on operator domains): thin views over the SMS services.

Who sees what: an SMS client's logins (and their API keys) send messages and read their own messages, incoming
messages, list entries and client settings; the operator's staff read everything of the operator and manage
clients, gateways, routes, number prefixes, lists, spam rules and fraud limits. Another customer's object is a 404;
another operator's key is a 401 (keys live in their operator's schema).
"""

from datetime import datetime, time

from django.db.models import ProtectedError
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.authentication import ApiKeyAuthentication
from core.api.errors import Conflict
from core.api.parsers import CsvParser
from core.api.permissions import IsOperatorStaff, StaffWritesCustomersRead
from core.api.viewsets import CustomerScopedMixin
from core.net import client_ip
from core.selectors import api_key_find, customer_for_user
from core.services import api_key_touch

from ..models import FraudLimit, Gateway, IncomingMessage, ListEntry, Message, NumberPrefix, Route, SmsClient, SpamRule
from ..selectors import gateway_states, message_detail_get, messages_summary
from ..services import (
    CreditInsufficient,
    RequestInvalid,
    RequestRefused,
    list_entries_import,
    messages_accept,
    sms_client_create,
    sms_client_secret_rotate,
)
from . import filtersets
from . import serializers as s

# --- plumbing ---


def send_answer(*, customer, payload, remote_ip: str | None) -> tuple[int, dict, list[tuple[str, str]]]:
    """The answer to a send request: (status, JSON body, extra headers). The DRF views and the ASGI fast path
    (sms/api/asgi.py) both answer through this, so they cannot differ."""
    try:
        accepted = messages_accept(customer=customer, payload=payload, remote_ip=remote_ip)
    except RequestInvalid as exc:
        message = "Invalid input: " + ", ".join(exc.fields) + "."
        return 400, {"error": {"code": "invalid", "message": message, "fields": exc.fields}}, []
    except RequestRefused as exc:
        headers = [("Retry-After", str(exc.retry_after))] if exc.retry_after else []
        return exc.status, {"error": {"code": exc.code, "message": exc.message, "fields": {}}}, headers
    except CreditInsufficient as exc:
        message = f"Not enough credit: the request costs {exc.needed} {exc.currency}, {exc.available} is available."
        error = {
            "code": "insufficient_credit",
            "message": message,
            "fields": {},
            "balance": str(exc.balance),
            "available": str(exc.available),
            "needed": str(exc.needed),
            "currency": exc.currency,
        }
        return 402, {"error": error}, []
    return 201, s.accepted_as_json(accepted), []


def _send(request, payload) -> Response:
    status_code, body, headers = send_answer(
        customer=customer_for_user(user=request.user), payload=payload, remote_ip=client_ip(request.META)
    )
    return Response(body, status=status_code, headers=dict(headers))


SEND_RESPONSES = {
    201: s.SendResponseSerializer,
    400: OpenApiResponse(description="A field is invalid; `fields` names it (e.g. `messages[3].to`)."),
    402: OpenApiResponse(description="Not enough credit; the error carries `balance`, `available`, `needed`."),
    403: OpenApiResponse(description="Not an SMS client, or calling from an address not allowed."),
    429: OpenApiResponse(description="Over the client's TPS, or its queue is full; see Retry-After."),
}


# --- messages ---


@extend_schema_view(
    list=extend_schema(summary="The caller's messages (all of the operator's for staff), newest first"),
    retrieve=extend_schema(summary="One message with its status events and the callback attempts that carried them"),
)
class MessageViewSet(CustomerScopedMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = Message.objects.all()
    serializer_class = s.MessageSerializer
    filterset_class = filtersets.MessageFilterSet
    ordering_fields = ["id", "created_at", "status", "done_at"]
    customer_field = "customer"

    def get_throttles(self):
        # Sending has its own, per client, limits (TPS, queue depth): the per-key request rate does not apply.
        return [] if self.action == "create" else super().get_throttles()

    def get_serializer_class(self):
        if self.action == "retrieve":
            return s.MessageDetailSerializer if self.caller_customer else s.StaffMessageDetailSerializer
        return super().get_serializer_class()

    def get_object(self):
        try:
            return message_detail_get(pk=int(self.kwargs["pk"]), customer=self.caller_customer)
        except (Message.DoesNotExist, ValueError) as exc:
            raise exceptions.NotFound("No such message.") from exc

    @extend_schema(
        summary="Send one message or a batch of up to 10,000 recipients",
        request=s.SendRequestSerializer,
        responses=SEND_RESPONSES,
    )
    def create(self, request, *args, **kwargs):
        if not isinstance(request.data, dict):
            raise exceptions.ValidationError({"non_field_errors": ["Send a JSON object."]})
        return _send(request, request.data)

    @extend_schema(
        summary="Totals since midnight (operator's time zone): messages, parts, credit, per status",
        responses=s.MessagesSummarySerializer,
    )
    @action(detail=False, methods=["get"])
    def summary(self, request):
        midnight = timezone.make_aware(datetime.combine(timezone.localdate(), time.min))
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            import zoneinfo

            zone = zoneinfo.ZoneInfo(tenant.time_zone)
            midnight = datetime.combine(timezone.now().astimezone(zone).date(), time.min, tzinfo=zone)
        return Response(
            s.MessagesSummarySerializer(messages_summary(customer=self.caller_customer, since=midnight)).data
        )


class QueryApiKeyAuthentication(ApiKeyAuthentication):
    """`?api_key=<key>` for clients that can only do a plain GET (the key then shows in logs: prefer the header)."""

    def authenticate(self, request):
        raw = request.query_params.get("api_key")
        if not raw:
            return None
        api_key = api_key_find(raw_key=raw)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        api_key_touch(api_key=api_key)
        return api_key.user, api_key


class QueryApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = QueryApiKeyAuthentication
    name = "ApiKeyQuery"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "query", "name": "api_key", "description": "The API key (GET send only)."}


class SendView(APIView):
    """The legacy GET form of sending, for clients that can only do HTTP GET."""

    authentication_classes = [ApiKeyAuthentication, QueryApiKeyAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    throttle_classes = []

    @extend_schema(
        summary="Send by GET: /api/v1/sms/send?to=…&from=…&text=… (to may list numbers, comma-separated)",
        parameters=[
            OpenApiParameter("to", OpenApiTypes.STR, required=True, description="One number, or several with commas."),
            OpenApiParameter("from", OpenApiTypes.STR, description="Sender id; the client's first by default."),
            OpenApiParameter("text", OpenApiTypes.STR, required=True),
            OpenApiParameter("callback_url", OpenApiTypes.URI),
            OpenApiParameter("validity", OpenApiTypes.INT, description="Seconds."),
            OpenApiParameter("scheduled_at", OpenApiTypes.DATETIME),
            OpenApiParameter("client_reference", OpenApiTypes.STR),
            OpenApiParameter("api_key", OpenApiTypes.STR, description="The API key, if not in the header."),
        ],
        responses=SEND_RESPONSES,
    )
    def get(self, request):
        params = request.query_params
        payload = {
            name: params[name]
            for name in ("from", "text", "callback_url", "scheduled_at", "client_reference")
            if name in params
        }
        if "to" in params:
            numbers = [n for n in params["to"].split(",") if n.strip()]
            payload["to"] = numbers if len(numbers) != 1 else numbers[0]
        if "validity" in params:
            try:
                payload["validity"] = int(params["validity"])
            except ValueError as exc:
                raise exceptions.ValidationError({"validity": ["Seconds, as a whole number."]}) from exc
        return _send(request, payload)


# --- the operator's set-up ---


class StaffViewSet(CustomerScopedMixin, viewsets.ModelViewSet):
    """The operator's own rows: staff only."""

    customer_field = None
    permission_classes = [IsAuthenticated, IsOperatorStaff]

    def perform_destroy(self, instance):
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict(
                f"{instance} is still in use: {exc.protected_objects.__len__()} row(s) refer to it."
            ) from exc


@extend_schema_view(create=extend_schema(request=s.SmsClientCreateSerializer, responses={201: s.SmsClientSerializer}))
class SmsClientViewSet(CustomerScopedMixin, viewsets.ModelViewSet):
    """SMS clients: staff manage them; a client's login reads its own (with its callback secret)."""

    queryset = SmsClient.objects.select_related("customer", "account")
    serializer_class = s.SmsClientSerializer
    permission_classes = [StaffWritesCustomersRead]
    customer_field = "customer"
    ordering_fields = ["id", "created_at"]
    filterset_fields = ["customer"]

    def create(self, request, *args, **kwargs):
        serializer = s.SmsClientCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        tenant = getattr(request, "tenant", None)
        data.setdefault("currency", getattr(tenant, "currency", "EUR"))
        from django.core.exceptions import ValidationError

        try:
            client = sms_client_create(**data)
        except ValidationError as exc:
            raise exceptions.ValidationError(exc.message_dict) from exc
        client = self.get_queryset().get(pk=client.pk)
        return Response(s.SmsClientSerializer(client).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        raise exceptions.MethodNotAllowed("DELETE", detail="Deactivate the client's customer instead.")

    @extend_schema(request=None, responses=s.SmsClientSerializer, summary="A new callback secret (the old one stops)")
    @action(detail=True, methods=["post"], url_path="rotate-secret", permission_classes=[IsAuthenticated])
    def rotate_secret(self, request, pk=None):
        client = sms_client_secret_rotate(client=self.get_object())
        return Response(s.SmsClientSerializer(client).data)


class GatewayViewSet(StaffViewSet):
    """Upstream SMPP gateways, with their live state as the submitters report it."""

    queryset = Gateway.objects.all()
    serializer_class = s.GatewaySerializer
    filterset_fields = ["enabled"]
    ordering_fields = ["name", "id"]

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "gateway_states": gateway_states()}


class RouteViewSet(StaffViewSet):
    queryset = Route.objects.all()
    serializer_class = s.RouteSerializer
    filterset_class = filtersets.RouteFilterSet
    ordering_fields = ["priority", "id", "prefix"]


class NumberPrefixViewSet(StaffViewSet):
    queryset = NumberPrefix.objects.all()
    serializer_class = s.NumberPrefixSerializer
    filterset_fields = ["country", "mobile_operator"]
    ordering_fields = ["prefix"]


class SpamRuleViewSet(StaffViewSet):
    queryset = SpamRule.objects.all()
    serializer_class = s.SpamRuleSerializer
    filterset_fields = ["kind", "enabled"]


class FraudLimitViewSet(StaffViewSet):
    queryset = FraudLimit.objects.all()
    serializer_class = s.FraudLimitSerializer
    filterset_fields = ["scope", "metric", "client", "enabled"]


class ListEntryViewSet(CustomerScopedMixin, viewsets.ModelViewSet):
    """Blacklist, do-not-disturb and opt-out entries; a client's login reads its own opt-outs."""

    queryset = ListEntry.objects.all()
    serializer_class = s.ListEntrySerializer
    permission_classes = [StaffWritesCustomersRead]
    customer_field = "client__customer"
    filterset_class = filtersets.ListEntryFilterSet
    ordering_fields = ["number", "created_at"]

    @extend_schema(
        summary="Import numbers from CSV (multipart `file`, or a text/csv body with the fields as query parameters)",
        request={"multipart/form-data": s.ListImportRequestSerializer, "text/csv": OpenApiTypes.STR},
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, description="For a text/csv body: blacklist, dnd or optout."),
            OpenApiParameter("client", OpenApiTypes.INT, description="For a text/csv body: the client, else all."),
            OpenApiParameter("dry_run", OpenApiTypes.BOOL),
        ],
        responses={200: s.ListImportResultSerializer, 400: s.ListImportResultSerializer},
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        parser_classes=[MultiPartParser, FormParser, CsvParser, JSONParser],
    )
    def import_csv(self, request):
        if isinstance(request.data, str):
            fields, source = request.query_params, request.data
        else:
            fields, source = request.data, None
        serializer = s.ListImportRequestSerializer(
            data={k: fields.get(k) for k in ("kind", "client", "note", "dry_run") if fields.get(k) is not None}
        )
        serializer.is_valid(raise_exception=True)
        if source is None:
            upload = request.data.get("file")
            if upload is None:
                raise exceptions.ValidationError({"file": ["Upload a CSV file (or send a text/csv body)."]})
            try:
                source = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise exceptions.ValidationError({"file": [f"The CSV is not UTF-8: {exc}"]}) from exc
        data = serializer.validated_data
        result = list_entries_import(
            kind=data["kind"],
            source=source,
            client=data.get("client"),
            note=data.get("note", ""),
            dry_run=data["dry_run"],
        )
        body = {
            "created": result.created,
            "existing": result.existing,
            "dry_run": data["dry_run"],
            "errors": result.errors,
        }
        if result.errors:
            return Response(
                {
                    "error": {
                        "code": "invalid",
                        "message": f"{len(result.errors)} bad line(s); nothing was imported.",
                        "fields": {"file": [f"line {e['line']}: {e['reason']}" for e in result.errors]},
                    },
                    **body,
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(body)


class IncomingMessageViewSet(CustomerScopedMixin, viewsets.ReadOnlyModelViewSet):
    """Messages subscribers sent to the clients' numbers and sender ids (MO)."""

    queryset = IncomingMessage.objects.all()
    serializer_class = s.IncomingMessageSerializer
    customer_field = "customer"
    filterset_class = filtersets.IncomingMessageFilterSet
    ordering_fields = ["id", "created_at"]
