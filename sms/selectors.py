"""Reads of the SMS app. The operator's SMS configuration is read once per process and cached (`sms_config_get`).

The configuration (clients, gateways, routes, number prefixes, spam rules, fraud limits) is read on every message,
so it is kept in memory per operator and invalidated by a version number in Redis, which every save or delete of
those rows bumps (`sms_config_changed`, wired to the models' signals in `apps.py`). A process checks the version at
most every CONFIG_CHECK_S; changes made in the same process apply at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Count, Prefetch, Sum

from billing.models import Account
from core.models import Customer

from .choices import FRAUD_PERIOD_SECONDS, MessageStatus
from .filters import SpamFilter, SpamRuleSpec
from .kv import key, kv
from .models import (
    CallbackAttempt,
    FraudLimit,
    Gateway,
    Message,
    MessageEvent,
    NumberPrefix,
    Route,
    SmsClient,
    SpamRule,
)
from .numbers import PrefixEntry, PrefixTable
from .routing import RouteRule, RouteTable

CONFIG_CHECK_S = 0.5


@dataclass(frozen=True)
class ClientSpec:
    """What the hot paths need of one SMS client."""

    client_id: int
    customer_id: int
    name: str
    account_id: int
    currency: str
    sender_ids: tuple[str, ...]
    allowed_networks: tuple  # ipaddress networks; empty: any address
    tps_limit: int
    max_queued: int
    duplicate_window_s: int
    callback_url: str
    callback_secret: str

    def ip_allowed(self, address: str | None) -> bool:
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)


@dataclass(frozen=True)
class GatewaySpec:
    id: int
    name: str
    default_encoding: str
    settings: dict  # GatewayConfig fields
    config_key: str  # changes whenever anything that needs a rebind changes


@dataclass(frozen=True)
class FraudLimitSpec:
    id: int
    name: str
    scope: str
    metric: str
    period_s: int
    limit: Decimal
    client_id: int | None
    mobile_operator: str


@dataclass
class SmsConfig:
    routes: RouteTable
    prefixes: PrefixTable
    spam: SpamFilter
    fraud_limits: tuple[FraudLimitSpec, ...]
    gateways: dict[int, GatewaySpec]
    clients: dict[int, ClientSpec]  # by customer id
    loaded_at: float = field(default_factory=time.monotonic)


_configs: dict[str, tuple[int, float, SmsConfig]] = {}  # schema -> (version, checked_at, config)
_configs_lock = threading.Lock()


def _version_key(schema: str) -> str:
    return key(schema, "config")


def sms_config_changed(*, schema: str | None = None) -> None:
    """The operator's SMS configuration changed: every process reloads it (now, and again once committed)."""
    schema = schema or connection.schema_name
    _configs.pop(schema, None)
    kv().incr(_version_key(schema))
    transaction.on_commit(lambda: (_configs.pop(schema, None), kv().incr(_version_key(schema))))


def sms_config_get(*, schema: str | None = None) -> SmsConfig:
    """The current schema's SMS configuration, from the process cache when its version is current."""
    schema = schema or connection.schema_name
    now = time.monotonic()
    cached = _configs.get(schema)
    if cached is not None and now - cached[1] < CONFIG_CHECK_S:
        return cached[2]
    version = int(kv().get(_version_key(schema)) or 0)
    if cached is not None and cached[0] == version:
        _configs[schema] = (version, now, cached[2])
        return cached[2]
    config = _config_load()
    with _configs_lock:
        _configs[schema] = (version, now, config)
    return config


def _config_load() -> SmsConfig:
    routes = [
        RouteRule(
            id=r.id,
            client_id=r.client_id,
            prefix=r.prefix,
            country=r.country,
            mobile_operator=r.mobile_operator,
            priority=r.priority,
            gateway_id=r.gateway_id,
            price_per_part=r.price_per_part,
            cost_per_part=r.cost_per_part,
        )
        for r in Route.objects.enabled()
    ]
    clients = {}
    defaults = {}
    for client in SmsClient.objects.select_related("customer", "account"):
        if client.default_route_id:
            defaults[client.id] = client.default_route_id
        clients[client.customer_id] = ClientSpec(
            client_id=client.id,
            customer_id=client.customer_id,
            name=client.customer.name,
            account_id=client.account_id,
            currency=client.account.currency,
            sender_ids=tuple(client.sender_ids),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in client.allowed_ips),
            tps_limit=client.tps_limit,
            max_queued=client.max_queued,
            duplicate_window_s=client.duplicate_window_s,
            callback_url=client.callback_url,
            callback_secret=client.callback_secret,
        )
    gateways = {g.id: _gateway_spec(g) for g in Gateway.objects.filter(enabled=True)}
    return SmsConfig(
        routes=RouteTable(routes, client_defaults=defaults),
        prefixes=PrefixTable([PrefixEntry(p.prefix, p.country, p.mobile_operator) for p in NumberPrefix.objects.all()]),
        spam=SpamFilter(SpamRuleSpec(s.name, s.kind, s.pattern) for s in SpamRule.objects.filter(enabled=True)),
        fraud_limits=tuple(
            FraudLimitSpec(
                id=f.id,
                name=f.name,
                scope=f.scope,
                metric=f.metric,
                period_s=FRAUD_PERIOD_SECONDS[f.period],
                limit=f.limit,
                client_id=f.client_id,
                mobile_operator=f.mobile_operator,
            )
            for f in FraudLimit.objects.filter(enabled=True)
        ),
        gateways=gateways,
        clients=clients,
    )


def _gateway_spec(gateway: Gateway) -> GatewaySpec:
    settings = {
        "name": f"{connection.schema_name}/{gateway.name}",
        "host": gateway.host,
        "port": gateway.port,
        "system_id": gateway.system_id,
        "password": gateway.password,
        "system_type": gateway.system_type,
        "bind_mode": gateway.bind_mode,
        "tps": float(gateway.tps),
        "window": gateway.window,
        "source_ton": gateway.source_ton,
        "source_npi": gateway.source_npi,
        "dest_ton": gateway.dest_ton,
        "dest_npi": gateway.dest_npi,
    }
    config_key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:16]
    return GatewaySpec(gateway.id, gateway.name, gateway.default_encoding, settings, config_key)


def sms_client_for_customer(*, customer: Customer | None) -> ClientSpec | None:
    if customer is None:
        return None
    return sms_config_get().clients.get(customer.pk)


# --- messages -----------------------------------------------------------------------------------------------------


def message_list(*, customer: Customer | None):
    """Messages the caller may see, newest first: a client's own, or all of them for the operator's staff."""
    queryset = Message.objects.all()
    return queryset if customer is None else queryset.of_customer(customer)


def message_detail_get(*, pk: int, customer: Customer | None) -> Message:
    """One message with its events and the callback attempts that carried them (404 outside the caller's scope)."""
    attempts = CallbackAttempt.objects.order_by("created_at", "id")
    events = MessageEvent.objects.select_related("callback_batch").prefetch_related(
        Prefetch("callback_batch__attempt_log", queryset=attempts)
    )
    return message_list(customer=customer).prefetch_related(Prefetch("events", queryset=events)).get(pk=pk)


def queue_depths(*, now: datetime) -> dict[int, int]:
    """Messages waiting for submission now, per customer id."""
    rows = Message.objects.due(now).values("customer_id").annotate(n=Count("id")).values_list("customer_id", "n")
    return dict(rows)


def account_balance_get(*, account_id: int) -> Account:
    return Account.objects.get(pk=account_id)


def gateway_states(*, schema: str | None = None) -> dict[int, dict]:
    """The live state of the operator's gateways as the submitters last reported it (Redis), by gateway id."""
    import json

    schema = schema or connection.schema_name
    raw = kv().hgetall(key(schema, "gateways"))
    states = {}
    now = time.time()
    for gateway_id, value in raw.items():
        state = json.loads(value)
        if now - state.get("reported_at", 0) > 30:
            state["state"] = "unknown"  # no submitter reported it lately
        states[int(gateway_id)] = state
    return states


def messages_summary(*, customer: Customer | None, since: datetime) -> dict:
    """Totals since a moment: messages, parts and credit, and messages per status."""
    queryset = message_list(customer=customer).filter(created_at__gte=since)
    by_status = dict(queryset.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    charged = queryset.filter(charged_at__isnull=False, refunded_at__isnull=True)
    totals = charged.aggregate(parts=Sum("parts"), credit=Sum("price"))
    return {
        "messages": sum(by_status.values()),
        "parts": totals["parts"] or 0,
        "credit": totals["credit"] or Decimal(0),
        "by_status": by_status,
        "pending": by_status.get(MessageStatus.ACCEPTED, 0) + by_status.get(MessageStatus.SUBMITTING, 0),
    }
