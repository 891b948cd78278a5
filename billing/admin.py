"""Billing in the operator console: tariffs (rate-deck import/export, class grid), trunks, classes, packages,
freephone numbers, CDR formats, accounts (balance and top-up), and the books and CDRs, read-only.

Every write goes through the billing services, as the API's do.
"""

import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse

from core.admin import operator_console

from . import csvformats, rating
from .api.views import last_calendar_month, operator_zone
from .choices import CdrFormatKind, Leg
from .models import (
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
from .selectors.decks import rates_read
from .selectors.grid import class_grid_average
from .services import account_create, account_topup, rates_import
from .services.grid import GridCell, GridInvalid, class_grid_save, tariff_touch

# --- Tariffs ---------------------------------------------------------------------------------------


class TimeBandInline(admin.TabularInline):
    model = TimeBand
    extra = 0


class RateDeckUploadForm(forms.Form):
    file = forms.FileField(help_text="CSV: prefix,destination,rate,connect_fee,increment,min_charge,effective_from")
    dry_run = forms.BooleanField(required=False, label="Dry run (check only, write nothing)")


@admin.register(Tariff, site=operator_console)
class TariffAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "currency", "is_default_cost", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name"]
    inlines = [TimeBandInline]
    change_form_template = "admin/billing/tariff/change_form.html"

    def get_urls(self):
        own = [
            path(
                "<int:object_id>/rates/import/",
                self.admin_site.admin_view(self.rates_import_view),
                name="billing_tariff_rates_import",
            ),
            path(
                "<int:object_id>/rates/export/",
                self.admin_site.admin_view(self.rates_export_view),
                name="billing_tariff_rates_export",
            ),
            path("<int:object_id>/grid/", self.admin_site.admin_view(self.grid_view), name="billing_tariff_grid"),
        ]
        return own + super().get_urls()

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        tariff_touch(tariff=form.instance)  # its time bands may have changed: rebuild the cached deck

    def _tariff(self, request, object_id: int, *, write: bool) -> Tariff:
        tariff = get_object_or_404(Tariff, pk=object_id)
        allowed = self.has_change_permission(request, tariff) if write else self.has_view_permission(request, tariff)
        if not allowed:
            raise PermissionDenied
        return tariff

    def rates_import_view(self, request, object_id: int):
        tariff = self._tariff(request, object_id, write=True)
        result = None
        if request.method == "POST":
            form = RateDeckUploadForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    source = form.cleaned_data["file"].read().decode("utf-8-sig")
                except UnicodeDecodeError:
                    form.add_error("file", "The file is not UTF-8 text.")
                else:
                    result = rates_import(tariff=tariff, source=source, dry_run=form.cleaned_data["dry_run"])
                    if result.ok and not result.dry_run:
                        messages.success(request, f"{result.rates} rates imported into {tariff.name}.")
                        return HttpResponseRedirect(reverse("console:billing_tariff_change", args=[tariff.pk]))
                    if result.ok:
                        messages.info(request, f"Dry run: {result.rates} rates are valid; nothing was written.")
                    else:
                        messages.error(request, f"{len(result.errors)} bad line(s): nothing was imported.")
        else:
            form = RateDeckUploadForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": tariff,
            "title": f"Import a rate deck into {tariff.name}",
            "form": form,
            "result": result,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/billing/tariff/rates_import.html", context)

    def rates_export_view(self, request, object_id: int):
        tariff = self._tariff(request, object_id, write=False)
        rates = rates_read(
            Rate.objects.filter(tariff=tariff).order_by("prefix", "service", "time_band", "effective_from")
        )
        response = HttpResponse(csvformats.write_rate_deck_csv(rates), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{tariff.name}-rates.csv"'
        return response

    def grid_view(self, request, object_id: int):
        tariff = self._tariff(request, object_id, write=request.method == "POST")
        originations = list(TariffClass.objects.filter(tariff=tariff, direction=Leg.ORIGINATION))
        terminations = list(TariffClass.objects.filter(tariff=tariff, direction=Leg.TERMINATION))
        stored = {(c.origination_id, c.termination_id): c.rate for c in ClassRate.objects.filter(tariff=tariff)}
        values = {key: format(rate, "f") for key, rate in stored.items()}
        errors: dict[tuple[int, int], str] = {}
        if request.method == "POST":
            values = {
                (o.pk, t.pk): request.POST.get(f"cell-{o.pk}-{t.pk}", "").strip()
                for o in originations
                for t in terminations
            }
            try:
                count = class_grid_save(tariff=tariff, cells=[GridCell(o, t, rate) for (o, t), rate in values.items()])
            except GridInvalid as exc:
                errors = {(e.origination, e.termination): e.reason for e in exc.errors}
                messages.error(request, f"{len(errors)} cell(s) are wrong: nothing was saved.")
            else:
                messages.success(request, f"Grid saved: {count} priced cell(s).")
                return HttpResponseRedirect(request.path)
        start, end = last_calendar_month(operator_zone(request))
        average = class_grid_average(tariff=tariff, start=start, end=end)
        rows = [
            {
                "origination": o,
                "cells": [
                    {
                        "name": f"cell-{o.pk}-{t.pk}",
                        "value": values.get((o.pk, t.pk), ""),
                        "error": errors.get((o.pk, t.pk)),
                    }
                    for t in terminations
                ],
            }
            for o in originations
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": tariff,
            "title": f"Class grid of {tariff.name}",
            "terminations": terminations,
            "rows": rows,
            "average": average,
            "period_start": start,
            "period_end": end,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/billing/tariff/grid.html", context)


class TariffTouchingAdmin(admin.ModelAdmin):
    """Rows that belong to a tariff: changing them retires the tariff's cached deck and grid."""

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        tariff_touch(tariff=obj.tariff)

    def delete_model(self, request, obj):
        tariff = obj.tariff
        super().delete_model(request, obj)
        tariff_touch(tariff=tariff)

    def delete_queryset(self, request, queryset):
        tariffs = list(Tariff.objects.filter(pk__in=queryset.values("tariff")))
        super().delete_queryset(request, queryset)
        for tariff in tariffs:
            tariff_touch(tariff=tariff)


@admin.register(Rate, site=operator_console)
class RateAdmin(TariffTouchingAdmin):
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


class TariffClassForm(forms.ModelForm):
    class Meta:
        model = TariffClass
        fields = ["tariff", "direction", "name", "prefixes", "leg_rate", "position"]

    def clean_prefixes(self):
        prefixes = [p.strip().lstrip("+") for p in self.cleaned_data["prefixes"]]
        bad = [p for p in prefixes if not (p.isascii() and p.isdigit() and len(p) <= rating.MAX_PREFIX_DIGITS)]
        if bad:
            raise forms.ValidationError(f"Not prefixes of 1 to 15 digits: {', '.join(bad)}")
        return prefixes


@admin.register(TariffClass, site=operator_console)
class TariffClassAdmin(TariffTouchingAdmin):
    form = TariffClassForm
    list_display = ["name", "tariff", "direction", "prefix_list", "leg_rate", "position"]
    list_filter = ["tariff", "direction"]
    search_fields = ["name"]
    list_select_related = ["tariff"]

    @admin.display(description="prefixes")
    def prefix_list(self, obj):
        return ", ".join(obj.prefixes)


@admin.register(Trunk, site=operator_console)
class TrunkAdmin(admin.ModelAdmin):
    list_display = ["name", "cost_tariff", "updated_at"]
    search_fields = ["name"]
    list_select_related = ["cost_tariff"]


class MinutePackageForm(forms.ModelForm):
    class Meta:
        model = MinutePackage
        fields = ["name", "prefixes", "included_minutes", "tiers"]

    def clean(self):
        data = super().clean()
        tiers = data.get("tiers") or []
        try:
            if not isinstance(tiers, list):
                raise ValueError("tiers are a list of {up_to_minutes, rate}")
            parsed = []
            for tier in tiers:
                bound = tier.get("up_to_minutes")
                parsed.append(
                    rating.PackageTier(
                        up_to_minutes=None if bound in (None, "") else Decimal(str(bound)),
                        rate=Decimal(str(tier["rate"])),
                    )
                )
            rating.MinutePackage(
                name=data.get("name") or "package",
                prefixes=frozenset(data.get("prefixes") or []),
                included_minutes=Decimal(data.get("included_minutes") or 0),
                tiers=tuple(parsed),
            )
        except (AttributeError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
            self.add_error("tiers", f"Bad tiers: {exc}")
        return data


@admin.register(MinutePackage, site=operator_console)
class MinutePackageAdmin(admin.ModelAdmin):
    form = MinutePackageForm
    list_display = ["name", "included_minutes", "updated_at"]
    search_fields = ["name"]


@admin.register(FreephoneNumber, site=operator_console)
class FreephoneNumberAdmin(admin.ModelAdmin):
    list_display = ["number", "account", "created_at"]
    search_fields = ["number", "account__code", "account__name"]
    list_select_related = ["account"]
    raw_id_fields = ["account"]


class CdrFormatForm(forms.ModelForm):
    class Meta:
        model = CdrFormat
        fields = ["name", "kind", "columns", "delimiter", "has_header", "time_format"]

    def clean(self):
        data = super().clean()
        columns, delimiter = data.get("columns"), data.get("delimiter") or ","
        if columns is None:
            return data
        try:
            if not isinstance(columns, dict):
                raise ValueError("columns are a JSON object {field: column}")
            if data.get("kind") == CdrFormatKind.FREEPHONE:
                csvformats.parse_freephone_cdrs("", columns, delimiter=delimiter)
            else:
                csvformats.parse_mapped_cdr_csv("", columns, delimiter=delimiter)
        except ValueError as exc:
            self.add_error("columns", str(exc))
        return data


@admin.register(CdrFormat, site=operator_console)
class CdrFormatAdmin(admin.ModelAdmin):
    form = CdrFormatForm
    list_display = ["name", "kind", "delimiter", "has_header", "updated_at"]
    list_filter = ["kind"]
    search_fields = ["name"]


# --- Accounts and the books -------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Books are written by the services only; the console shows them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class TopupForm(forms.Form):
    amount = forms.DecimalField(max_digits=20, decimal_places=6, min_value=Decimal("0.000001"))
    description = forms.CharField(max_length=300, required=False, initial="Top-up")
    # One key per rendered form: submitting the same form twice (double click, reload) tops up once.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64)


@admin.register(Account, site=operator_console)
class AccountAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "code",
        "customer",
        "kind",
        "currency",
        "balance",
        "reserved",
        "available_credit",
        "credit_limit",
        "tariff",
    ]
    list_filter = ["kind", "currency"]
    search_fields = ["name", "code"]
    readonly_fields = ["balance", "reserved", "available_credit"]
    list_select_related = ["customer", "tariff"]
    filter_horizontal = ["packages"]
    change_form_template = "admin/billing/account/change_form.html"

    @admin.display(description="available")
    def available_credit(self, obj):
        return obj.available if obj.pk else "-"

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ["code", "currency"]  # CDRs name accounts by code; entries are in its currency
        return fields

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created = account_create(
            name=obj.name,
            code=obj.code,
            currency=obj.currency,
            tariff=obj.tariff,
            customer=obj.customer,
            kind=obj.kind,
            credit_limit=obj.credit_limit,
        )
        obj.pk, obj.created_at, obj.updated_at = created.pk, created.created_at, created.updated_at
        obj._state.adding = False

    def get_urls(self):
        own = [
            path("<int:object_id>/topup/", self.admin_site.admin_view(self.topup_view), name="billing_account_topup")
        ]
        return own + super().get_urls()

    def topup_view(self, request, object_id: int):
        account = get_object_or_404(Account, pk=object_id)
        if not self.has_change_permission(request, account):
            raise PermissionDenied
        if request.method == "POST":
            form = TopupForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                with transaction.atomic():
                    _, created = account_topup(
                        account=account,
                        amount=data["amount"],
                        idempotency_key=f"console-topup:{data['idempotency_key']}",
                        description=data["description"] or "Top-up",
                    )
                if created:
                    messages.success(request, f"{account.code} topped up by {data['amount']} {account.currency}.")
                else:
                    messages.warning(request, "This top-up was already made (the form was sent twice); nothing new.")
                return HttpResponseRedirect(reverse("console:billing_account_change", args=[account.pk]))
        else:
            form = TopupForm(initial={"idempotency_key": uuid.uuid4().hex, "description": "Top-up"})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": account,
            "title": f"Top up {account}",
            "form": form,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/billing/account/topup.html", context)


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


class RatingStatusFilter(admin.SimpleListFilter):
    """Unrated CDRs first: what the operator has to fix (a missing rate, account, freephone number…)."""

    title = "rating"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("unrated", "Unrated (needs a rate or account)"), ("rated", "Rated")]

    def queryset(self, request, queryset):
        if self.value() in ("rated", "unrated"):
            return queryset.filter(status=self.value())
        return queryset


@admin.register(Cdr, site=operator_console)
class CdrAdmin(ReadOnlyAdmin):
    list_display = [
        "start",
        "source",
        "source_id",
        "leg",
        "account_code",
        "caller",
        "callee",
        "billsec",
        "status",
        "price",
        "cost",
        "margin",
        "unrated_reason",
    ]
    list_filter = [RatingStatusFilter, "source", "service", "leg"]
    search_fields = ["source_id", "caller", "callee", "account_code", "correlation_id"]
    list_select_related = ["account"]

    @admin.display(description="margin")
    def margin(self, obj):
        return obj.margin


from . import admin_reports  # noqa: E402,F401
