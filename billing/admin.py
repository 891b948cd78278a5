"""Billing in the operator console: tariffs and their rates, accounts and their ledger, CDRs."""

from django.contrib import admin

from core.admin import operator_console

from .models import Account, Cdr, LedgerEntry, Rate, Reservation, Tariff, TimeBand


class TimeBandInline(admin.TabularInline):
    model = TimeBand
    extra = 0


@admin.register(Tariff, site=operator_console)
class TariffAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "currency", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name"]
    inlines = [TimeBandInline]


@admin.register(Rate, site=operator_console)
class RateAdmin(admin.ModelAdmin):
    list_display = [
        "tariff",
        "prefix",
        "destination",
        "service",
        "rate",
        "connect_fee",
        "increment",
        "min_charge",
        "effective_from",
        "time_band",
    ]
    list_filter = ["tariff", "service"]
    search_fields = ["prefix", "destination"]
    list_select_related = ["tariff"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """Books are written by the services only; the console shows them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Account, site=operator_console)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "customer", "kind", "currency", "balance", "reserved", "credit_limit", "tariff"]
    list_filter = ["kind", "currency"]
    search_fields = ["name", "code"]
    readonly_fields = ["balance", "reserved"]
    list_select_related = ["customer", "tariff"]


@admin.register(LedgerEntry, site=operator_console)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "account", "kind", "amount", "description", "idempotency_key"]
    list_filter = ["kind"]
    search_fields = ["idempotency_key", "account__code"]
    list_select_related = ["account"]


@admin.register(Reservation, site=operator_console)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "account", "amount", "committed_amount", "status", "expires_at"]
    list_filter = ["status"]
    list_select_related = ["account"]


@admin.register(Cdr, site=operator_console)
class CdrAdmin(ReadOnlyAdmin):
    list_display = [
        "start",
        "source",
        "source_id",
        "account_code",
        "caller",
        "callee",
        "billsec",
        "status",
        "price",
        "unrated_reason",
    ]
    list_filter = ["status", "source", "service", "leg"]
    search_fields = ["source_id", "caller", "callee", "account_code", "correlation_id"]
    list_select_related = ["account"]
