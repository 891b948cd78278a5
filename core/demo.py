"""The demo `make run` loads on first start: a platform admin, operator "demo", client "acme".

Passwords are random per installation, kept in var/demo-logins.json so later runs can print them
again; nothing secret is in the repository. Product apps add their sample data through `DEMO_STEPS`.
"""

import json
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django_tenants.utils import schema_context

from config.embedded import VAR_DIR
from tenants.models import Operator
from tenants.services import operator_provision, platform_tenant_ensure, public_url

from .choices import CustomerKind
from .models import Customer
from .services import customer_create, user_create

LOGINS_FILE = Path(VAR_DIR) / "demo-logins.json"
DEMO_SLUG = "demo"
DEMO_DOMAIN = "demo.localhost"

# (module path, function name) of product demo steps, each called as f(operator=...) inside the demo schema.
DEMO_STEPS: list[tuple[str, str]] = [("billing.demo", "billing_demo_load"), ("sms.demo", "sms_demo_load")]


def _password() -> str:
    return secrets.token_urlsafe(9)


def demo_load(*, logins_file: Path = LOGINS_FILE, samples: bool = True) -> dict:
    """Create the demo once; return the logins (read back from var/ when it already exists).

    `samples=False` leaves out the products' sample data (the test session builds its own)."""
    if Operator.objects.filter(schema_name=DEMO_SLUG).exists() and logins_file.exists():
        return json.loads(logins_file.read_text())
    platform_tenant_ensure()
    logins = {}
    User = get_user_model()
    platform_password = _password()
    admin = User.objects.filter(username="admin@localhost").first()
    if admin is None:
        user_create(email="admin@localhost", password=platform_password, is_staff=True, is_superuser=True)
    else:
        admin.set_password(platform_password)
        admin.save()
    logins["platform"] = {
        "url": public_url(settings.PLATFORM_DOMAIN, "/admin/"),
        "email": "admin@localhost",
        "password": platform_password,
    }

    if not Operator.objects.filter(schema_name=DEMO_SLUG).exists():
        operator_provision(
            slug=DEMO_SLUG,
            name="Demo Telecom",
            domain=DEMO_DOMAIN,
            admin_email="admin@demo.localhost",
            products=["mvno", "pbx", "sms"],
            time_zone="Europe/Madrid",
            currency="EUR",
            product_name="DemoTel",
            send_welcome=False,
        )
        Operator.objects.filter(schema_name=DEMO_SLUG).update(
            primary_colour="#6a1b9a", accent_colour="#ffb300", support_email="support@demo.localhost"
        )
    operator = Operator.objects.get(schema_name=DEMO_SLUG)
    with schema_context(DEMO_SLUG):
        operator_password, client_password = _password(), _password()
        staff = User.objects.get(username="admin@demo.localhost")
        staff.set_password(operator_password)
        staff.save()
        acme = Customer.objects.filter(subdomain="acme").first()
        if acme is None:
            acme = customer_create(
                name="Acme Corp",
                kind=CustomerKind.PBX_CLIENT,
                subdomain="acme",
                admin_email="boss@acme.example",
                admin_password=client_password,
            )
        else:
            boss = User.objects.get(username="boss@acme.example")
            boss.set_password(client_password)
            boss.save()
        for module, function in DEMO_STEPS if samples else []:
            getattr(__import__(module, fromlist=[function]), function)(operator=operator)
    logins["operator"] = {
        "url": public_url(DEMO_DOMAIN, "/admin/"),
        "email": "admin@demo.localhost",
        "password": operator_password,
    }
    logins["client"] = {
        "url": public_url(f"acme.{DEMO_DOMAIN}", "/"),
        "email": "boss@acme.example",
        "password": client_password,
    }
    logins_file.parent.mkdir(parents=True, exist_ok=True)
    logins_file.write_text(json.dumps(logins, indent=2))
    logins_file.chmod(0o600)
    return logins
