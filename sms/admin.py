"""SMS in the operator console: clients, gateways (with their live state), routes, number prefixes, lists (with CSV
import), spam rules, fraud limits; messages, incoming messages and callbacks read-only. Writes that are more than
saving a row go through the SMS services, as the API's do."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from core.admin import operator_console

from .admin_reports import MessageReportsMixin
from .choices import ListKind
from .models import (
    CallbackAttempt,
    CallbackBatch,
    FraudLimit,
    Gateway,
    IncomingMessage,
    ListEntry,
    Message,
    MessageEvent,
    MessagePart,
    NumberPrefix,
    Route,
    SmsClient,
    SpamRule,
)
from .selectors import gateway_states
from .services import list_entries_import, sms_client_secret_rotate


class ReadOnlyAdmin(admin.ModelAdmin):
    """Traffic is written by the services only; the console shows it."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- set-up ---


@admin.register(SmsClient, site=operator_console)
class SmsClientAdmin(admin.ModelAdmin):
    list_display = ["customer", "account", "balance", "sender_list", "tps_limit", "max_queued", "callback_url"]
    search_fields = ["customer__name", "sender_ids"]
    list_select_related = ["customer", "account"]
    readonly_fields = ["callback_secret", "created_at", "updated_at"]
    raw_id_fields = ["customer", "account"]
    actions = ["rotate_secret"]

    @admin.display(description="Balance")
    def balance(self, client):
        return f"{client.account.balance} {client.account.currency}"

    @admin.display(description="Sender ids")
    def sender_list(self, client):
        return ", ".join(client.sender_ids)

    @admin.action(description="Rotate the callback secret")
    def rotate_secret(self, request, queryset):
        for client in queryset:
            sms_client_secret_rotate(client=client)
        messages.success(request, f"{queryset.count()} secret(s) rotated; tell the clients.")


class GatewayForm(forms.ModelForm):
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        max_length=8,
        help_text="Leave empty to keep the current password.",
    )

    class Meta:
        model = Gateway
        fields = Gateway.SETTINGS

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not password:
            if self.instance.pk:
                return self.instance.password
            raise forms.ValidationError("A new gateway needs its password.")
        return password


@admin.register(Gateway, site=operator_console)
class GatewayAdmin(admin.ModelAdmin):
    form = GatewayForm
    list_display = ["name", "live_state", "throughput", "queue", "host", "port", "system_id", "bind_mode", "tps"]
    list_filter = ["enabled", "bind_mode"]
    search_fields = ["name", "host", "system_id"]
    change_list_template = "admin/sms/gateway/change_list.html"

    def changelist_view(self, request, extra_context=None):
        self._states = gateway_states()  # one Redis read for the whole page
        return super().changelist_view(request, extra_context)

    def _state(self, gateway) -> dict:
        return getattr(self, "_states", {}).get(gateway.pk, {})

    @admin.display(description="State")
    def live_state(self, gateway):
        state = self._state(gateway).get("state", "unknown") if gateway.enabled else "disabled"
        colour = {"bound": "#2e7d32", "connecting": "#ef6c00", "unbound": "#c62828"}.get(state, "#757575")
        return format_html(
            '<strong data-gateway="{}" data-field="state" style="color:{}">{}</strong>', gateway.pk, colour, state
        )

    @admin.display(description="Submits/s")
    def throughput(self, gateway):
        return format_html(
            '<span data-gateway="{}" data-field="throughput_per_s">{}</span>',
            gateway.pk,
            self._state(gateway).get("throughput_per_s", "–"),
        )

    @admin.display(description="Queued / in flight")
    def queue(self, gateway):
        state = self._state(gateway)
        return format_html(
            '<span data-gateway="{}" data-field="queue">{} / {}</span>',
            gateway.pk,
            state.get("queued", "–"),
            state.get("in_flight", "–"),
        )


@admin.register(Route, site=operator_console)
class RouteAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "client",
        "prefix",
        "country",
        "mobile_operator",
        "priority",
        "gateway",
        "price_per_part",
        "cost_per_part",
        "enabled",
    ]
    list_filter = ["enabled", "gateway", "country"]
    search_fields = ["name", "prefix", "mobile_operator", "client__customer__name"]
    list_select_related = ["gateway", "client__customer"]
    raw_id_fields = ["client"]


@admin.register(NumberPrefix, site=operator_console)
class NumberPrefixAdmin(admin.ModelAdmin):
    list_display = ["prefix", "country", "mobile_operator", "updated_at"]
    search_fields = ["prefix", "mobile_operator"]
    list_filter = ["country"]


class ListImportForm(forms.Form):
    kind = forms.ChoiceField(choices=ListKind.choices)
    client = forms.ModelChoiceField(
        queryset=SmsClient.objects.select_related("customer"), required=False, help_text="Empty: every client."
    )
    file = forms.FileField(help_text="CSV: one number per line; an optional second column is the note.")
    note = forms.CharField(required=False, max_length=200)
    dry_run = forms.BooleanField(required=False, help_text="Check the file without importing it.")


@admin.register(ListEntry, site=operator_console)
class ListEntryAdmin(admin.ModelAdmin):
    list_display = ["number", "kind", "client", "note", "created_at"]
    list_filter = ["kind"]
    search_fields = ["number", "note", "client__customer__name"]
    list_select_related = ["client__customer"]
    raw_id_fields = ["client"]
    change_list_template = "admin/sms/listentry/change_list.html"

    def get_urls(self):
        own = [path("import/", self.admin_site.admin_view(self.import_view), name="sms_listentry_import")]
        return own + super().get_urls()

    def import_view(self, request):
        if not self.has_add_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        result = None
        if request.method == "POST":
            form = ListImportForm(request.POST, request.FILES)
            if form.is_valid():
                try:
                    source = form.cleaned_data["file"].read().decode("utf-8-sig")
                except UnicodeDecodeError:
                    form.add_error("file", "The file is not UTF-8 text.")
                else:
                    data = form.cleaned_data
                    result = list_entries_import(
                        kind=data["kind"],
                        source=source,
                        client=data["client"],
                        note=data["note"],
                        dry_run=data["dry_run"],
                    )
                    if result.errors:
                        messages.error(request, f"{len(result.errors)} bad line(s): nothing was imported.")
                    elif data["dry_run"]:
                        messages.info(request, f"Dry run: {result.created} new, {result.existing} already listed.")
                    else:
                        messages.success(request, f"{result.created} imported, {result.existing} already listed.")
                        return HttpResponseRedirect(reverse("console:sms_listentry_changelist"))
        else:
            form = ListImportForm()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import numbers into a list",
            "form": form,
            "result": result,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/sms/listentry/import.html", context)


@admin.register(SpamRule, site=operator_console)
class SpamRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "pattern", "enabled", "updated_at"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name", "pattern"]


@admin.register(FraudLimit, site=operator_console)
class FraudLimitAdmin(admin.ModelAdmin):
    list_display = ["name", "scope", "metric", "period", "limit", "client", "mobile_operator", "enabled"]
    list_filter = ["scope", "metric", "period", "enabled"]
    raw_id_fields = ["client"]


# --- traffic, read-only ---


class MessageEventInline(ReadOnlyInline):
    model = MessageEvent
    fields = ["created_at", "status", "error_code", "error_description", "callback_batch"]
    readonly_fields = fields


class MessagePartInline(ReadOnlyInline):
    model = MessagePart
    fields = ["part_index", "gateway", "smsc_message_id", "status", "error_code", "submitted_at", "done_at"]
    readonly_fields = fields


@admin.register(Message, site=operator_console)
class MessageAdmin(MessageReportsMixin, ReadOnlyAdmin):
    list_display = [
        "id",
        "created_at",
        "customer",
        "sender",
        "destination",
        "status",
        "error_code",
        "parts",
        "price",
        "gateway",
    ]
    list_filter = ["status", "gateway", "encoding", "country"]
    search_fields = ["=id", "destination", "client_reference", "smsc_message_ids"]
    list_select_related = ["customer", "gateway"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # counting millions of rows on every page is not worth it
    inlines = [MessageEventInline, MessagePartInline]


@admin.register(IncomingMessage, site=operator_console)
class IncomingMessageAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "source", "destination", "customer", "text", "is_stop"]
    list_filter = ["is_stop"]
    search_fields = ["source", "destination", "text"]
    list_select_related = ["customer"]


class CallbackAttemptInline(ReadOnlyInline):
    model = CallbackAttempt
    fields = ["number", "created_at", "status_code", "error", "duration_ms", "next_retry_at"]
    readonly_fields = fields


@admin.register(CallbackBatch, site=operator_console)
class CallbackBatchAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "created_at",
        "customer",
        "url",
        "event_count",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
    ]
    list_filter = ["state"]
    search_fields = ["url"]
    list_select_related = ["customer"]
    inlines = [CallbackAttemptInline]


from . import admin_jobs  # noqa: E402, F401  (bulk jobs in the console)
