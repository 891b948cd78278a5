"""The client panel's skeleton: branded login, logout, password reset and a dashboard the products fill."""

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.db import connection
from django.http import FileResponse, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.html import escape
from django.views.decorators.cache import cache_control

from .selectors import customer_for_user


class PanelAuthenticationForm(AuthenticationForm):
    """On a client's subdomain only that client's logins get in; on the operator's domain, any of its logins."""

    def confirm_login_allowed(self, user):
        super().confirm_login_allowed(user)
        host_customer = getattr(self.request, "host_customer", None)
        if host_customer is not None and customer_for_user(user=user) != host_customer:
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class PanelLoginView(auth_views.LoginView):
    template_name = "panel/login.html"
    authentication_form = PanelAuthenticationForm
    redirect_authenticated_user = True


@login_required
def dashboard(request):
    customer = customer_for_user(user=request.user)
    if customer is None and request.user.is_staff and request.host_customer is None:
        # The operator's staff work in the console.
        return redirect("/admin/")
    return render(request, "panel/dashboard.html", {"customer": customer, "cards": []})


def home(request):
    return redirect("panel:dashboard" if request.user.is_authenticated else "panel:login")


password_reset = auth_views.PasswordResetView.as_view(
    template_name="panel/password_reset.html",
    email_template_name="panel/password_reset_email.txt",
    subject_template_name="panel/password_reset_subject.txt",
    success_url=reverse_lazy("panel:password_reset_done"),
)
password_reset_done = auth_views.PasswordResetDoneView.as_view(template_name="panel/password_reset_done.html")
password_reset_confirm = auth_views.PasswordResetConfirmView.as_view(
    template_name="panel/password_reset_confirm.html", success_url=reverse_lazy("panel:password_reset_complete")
)
password_reset_complete = auth_views.PasswordResetCompleteView.as_view(
    template_name="panel/password_reset_complete.html"
)
logout = auth_views.LogoutView.as_view()


@cache_control(max_age=300)
def logo(request):
    """The operator's uploaded logo, or a generated mark in its colours; the platform gets its own."""
    tenant = getattr(request, "tenant", None)
    if tenant is not None and connection.schema_name != "public" and tenant.logo:
        return FileResponse(tenant.logo.open("rb"))
    if tenant is None or connection.schema_name == "public":
        name, primary, accent = "OpenCarrier", "#263238", "#26a69a"
    else:
        name, primary, accent = tenant.brand, tenant.primary_colour, tenant.accent_colour
    initials = escape("".join(word[0] for word in name.split()[:2]).upper() or "OC")
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">'
        f'<rect width="64" height="64" rx="14" fill="{primary}"/>'
        f'<circle cx="50" cy="14" r="6" fill="{accent}"/>'
        f'<text x="32" y="42" font-family="sans-serif" font-size="24" font-weight="700" fill="#fff" '
        f'text-anchor="middle">{initials}</text></svg>'
    )
    return HttpResponse(svg, content_type="image/svg+xml")
