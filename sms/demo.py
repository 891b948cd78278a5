"""SMS sample data for `make run`'s demo operator: a gateway to the local SMSC simulator, routes with prices and
costs, an SMS client "Textco" with credit, sender ids, a callback-free set-up and a few filters — made through the
SMS services as an operator would. With ``manage.py smsc_simulator --port 2775`` running, the client's messages go
out and come back delivered."""

from decimal import Decimal

from .models import FraudLimit, Gateway, NumberPrefix, Route, SmsClient, SpamRule
from .services import sms_client_create

SIMULATOR_PORT = 2775
CLIENT_EMAIL = "ops@textco.example"


def sms_demo_load(*, operator, password: str | None = None) -> SmsClient:
    """Idempotent: a second run finds the demo gateway and changes nothing."""
    existing = SmsClient.objects.filter(customer__subdomain="textco").first()
    if existing is not None:
        return existing
    gateway = Gateway.objects.create(
        name="Local SMSC simulator",
        host="127.0.0.1",
        port=SIMULATOR_PORT,
        system_id="demo",
        password="demo",
        tps=500,
        window=50,
    )
    Route.objects.create(
        name="Default", gateway=gateway, price_per_part=Decimal("0.05"), cost_per_part=Decimal("0.02"), priority=100
    )
    Route.objects.create(
        name="Spain mobile",
        gateway=gateway,
        prefix="346",
        country="ES",
        price_per_part=Decimal("0.04"),
        cost_per_part=Decimal("0.015"),
        priority=50,
    )
    NumberPrefix.objects.create(prefix="346221", country="ES", mobile_operator="DemoTel (own network)")
    SpamRule.objects.create(name="Lottery scams", kind="keyword", pattern="you have won")
    FraudLimit.objects.create(name="Burst guard", scope="client", metric="count", period="minute", limit=6000)
    return sms_client_create(
        name="Textco",
        currency=operator.currency,
        subdomain="textco",
        admin_email=CLIENT_EMAIL,
        admin_password=password,
        credit=Decimal("50"),
        sender_ids=["TEXTCO", "+34600000001"],
        tps_limit=100,
    )
