from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from billing.models import money_field

from ..choices import BindMode, DefaultEncoding

digits_validator = RegexValidator(r"^[0-9]*$", "Digits only, without + (e.g. 34 or 447).")
country_validator = RegexValidator(r"^([A-Z]{2})?$", "An ISO 3166 country code in capitals, e.g. ES.")


class Gateway(models.Model):
    """One upstream SMPP 3.4 connection of the operator (an SMSC account): where and how messages leave."""

    name = models.CharField(max_length=80, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=2775, validators=[MaxValueValidator(65535)])
    system_id = models.CharField(max_length=15)
    password = models.CharField(max_length=8, help_text="SMPP allows 8 characters. Never shown back by the API.")
    system_type = models.CharField(max_length=12, blank=True)
    bind_mode = models.CharField(max_length=20, choices=BindMode.choices, default=BindMode.TRANSCEIVER)
    tps = models.PositiveIntegerField(default=100, validators=[MinValueValidator(1)], help_text="submit_sm per second.")
    window = models.PositiveIntegerField(
        default=50, validators=[MinValueValidator(1)], help_text="submit_sm outstanding at once."
    )
    source_ton = models.PositiveSmallIntegerField(default=5, validators=[MaxValueValidator(6)])
    source_npi = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(18)])
    dest_ton = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(6)])
    dest_npi = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(18)])
    default_encoding = models.CharField(max_length=4, choices=DefaultEncoding.choices, default=DefaultEncoding.GSM7)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # What the operator sets (console form and API): where, how and how fast to bind.
    SETTINGS = (
        *("name", "host", "port", "system_id", "password", "system_type", "bind_mode", "tps", "window"),
        *("source_ton", "source_npi", "dest_ton", "dest_npi", "default_encoding", "enabled"),
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RouteQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True, gateway__enabled=True)

    def operator_defaults(self):
        return self.filter(client__isnull=True)


class Route(models.Model):
    """Which gateway a client's (or, without client, any client's) messages to some destinations leave by.

    A route matches a destination when every criterion it sets matches (prefix, country, mobile operator; none set
    matches everything). Lower priority numbers are tried first; the price is what the client pays per part, the
    cost what the gateway costs the operator per part.
    """

    name = models.CharField(max_length=100, blank=True)
    client = models.ForeignKey(
        "sms.SmsClient",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="routes",
        help_text="Empty: an operator default route, for every client.",
    )
    prefix = models.CharField(max_length=15, blank=True, validators=[digits_validator])
    country = models.CharField(max_length=2, blank=True, validators=[country_validator])
    mobile_operator = models.CharField(
        max_length=80, blank=True, help_text="As the prefix table or phonenumbers name it."
    )
    priority = models.IntegerField(default=100, help_text="Lower first.")
    gateway = models.ForeignKey(Gateway, on_delete=models.PROTECT, related_name="routes")
    price_per_part = money_field(default=Decimal(0))
    cost_per_part = money_field(default=Decimal(0))
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RouteQuerySet.as_manager()

    class Meta:
        ordering = ["client_id", "priority", "-prefix", "id"]

    def __str__(self) -> str:
        what = " ".join(filter(None, [self.prefix and f"+{self.prefix}", self.country, self.mobile_operator])) or "*"
        return self.name or f"{what} → {self.gateway}"


class NumberPrefix(models.Model):
    """An operator-maintained number range: numbers starting with `prefix` belong to this mobile operator.

    It overrides phonenumbers' data (ported ranges, MVNOs, numbering changes newer than the library).
    """

    prefix = models.CharField(max_length=15, unique=True, validators=[digits_validator])
    country = models.CharField(max_length=2, blank=True, validators=[country_validator])
    mobile_operator = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["prefix"]
        verbose_name_plural = "number prefixes"

    def __str__(self) -> str:
        return f"+{self.prefix} {self.mobile_operator}"
