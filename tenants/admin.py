"""The platform super-admin console: Django admin on the platform domain."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse

from core.admin import ApiKeyAdmin
from core.models import ApiKey

from .choices import OperatorStatus, Product
from .models import Domain, Operator
from .services import OperatorConflict, operator_provision, operator_set_status


class PlatformConsole(admin.AdminSite):
    site_header = "OpenCarrier platform"
    site_title = "OpenCarrier platform"
    index_title = "Platform console"


platform_console = PlatformConsole(name="platform")


class ProvisionForm(forms.Form):
    slug = forms.SlugField(max_length=41, help_text="Schema name: lower-case letters, digits and _.")
    name = forms.CharField(max_length=200)
    domain = forms.CharField(max_length=253, help_text="e.g. demo.example.com")
    admin_email = forms.EmailField(help_text="Receives the set-password email.")
    products = forms.MultipleChoiceField(choices=Product.choices, required=False, widget=forms.CheckboxSelectMultiple)
    time_zone = forms.CharField(initial="UTC")
    currency = forms.CharField(initial="EUR", max_length=3)


class DomainInline(admin.TabularInline):
    model = Domain
    extra = 0


@admin.register(Operator, site=platform_console)
class OperatorAdmin(admin.ModelAdmin):
    list_display = ["name", "schema_name", "status", "primary_domain", "products", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "schema_name", "domains__domain"]
    readonly_fields = ["schema_name", "status", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "schema_name", "status", "products", "time_zone", "currency"]}),
        ("Branding", {"fields": ["product_name", "logo", "primary_colour", "accent_colour", "support_email"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]
    inlines = [DomainInline]
    actions = ["suspend", "resume"]

    def get_queryset(self, request):
        return super().get_queryset(request).operators().prefetch_related("domains")

    @admin.display(description="domain")
    def primary_domain(self, operator):
        return next((d.domain for d in operator.domains.all() if d.is_primary), "")

    def add_view(self, request, form_url="", extra_context=None):
        """Adding an operator is provisioning it: schema, domain and first admin, through the service."""
        form = ProvisionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                result = operator_provision(**form.cleaned_data)
            except OperatorConflict as exc:
                form.add_error("slug", str(exc))
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                messages.success(request, f"Operator provisioned. Console: {result.console_url}")
                return redirect(reverse("platform:tenants_operator_change", args=[result.operator.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Provision an operator",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/tenants/provision.html", context)

    @admin.action(description="Suspend selected operators")
    def suspend(self, request, queryset):
        for operator in queryset:
            operator_set_status(operator=operator, status=OperatorStatus.SUSPENDED)

    @admin.action(description="Resume selected operators")
    def resume(self, request, queryset):
        for operator in queryset:
            operator_set_status(operator=operator, status=OperatorStatus.ACTIVE)


@admin.register(Domain, site=platform_console)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["domain", "tenant", "is_primary"]
    search_fields = ["domain", "tenant__name"]


platform_console.register(User, UserAdmin)
platform_console.register(Group, GroupAdmin)
platform_console.register(ApiKey, ApiKeyAdmin)
