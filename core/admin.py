"""The operator console: Django admin on each operator's domain, in its schema and its colours.

Product apps register their models on `operator_console`; nothing of the platform's is registered here.
"""

from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User

from .models import ApiKey, Customer, CustomerMember
from .services import api_key_create, api_key_revoke


class OperatorConsole(admin.AdminSite):
    site_header = "Operator console"
    index_title = "Console"

    def each_context(self, request):
        context = super().each_context(request)
        tenant = getattr(request, "tenant", None)
        if tenant is not None:
            context["site_header"] = context["site_title"] = f"{tenant.brand} console"
        return context


operator_console = OperatorConsole(name="console")


class CustomerMemberInline(admin.TabularInline):
    model = CustomerMember
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Customer, site=operator_console)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "subdomain", "is_active", "created_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "subdomain"]
    inlines = [CustomerMemberInline]


@admin.register(ApiKey, site=operator_console)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created with the action on a user list or the API; here they are listed and revoked."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "prefix", "user__email"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    raw_id_fields = ["user"]
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        issued = api_key_create(user=obj.user, name=obj.name)
        obj.pk = issued.api_key.pk
        obj.prefix, obj.hashed_key, obj.created_at = (
            issued.api_key.prefix,
            issued.api_key.hashed_key,
            issued.api_key.created_at,
        )
        messages.warning(request, f"New API key (shown only now, copy it): {issued.raw_key}")

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            api_key_revoke(api_key=api_key)


operator_console.register(User, UserAdmin)
operator_console.register(Group, GroupAdmin)
