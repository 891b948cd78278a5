import zoneinfo

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django_tenants.models import DomainMixin, TenantMixin

from .choices import OperatorStatus, Product

colour_validator = RegexValidator(r"^#[0-9a-fA-F]{6}$", "Use a colour like #1a73e8.")
slug_validator = RegexValidator(
    r"^[a-z][a-z0-9_]{1,40}$", "Lower-case letters, digits and _, starting with a letter (2-41 characters)."
)


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not an IANA time zone.")


RESERVED_SLUGS = {"public", "template_operator", "pg_catalog", "information_schema", "www", "api", "admin"}


class OperatorQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status=OperatorStatus.ACTIVE)

    def operators(self):
        """Every operator, without the platform's own public-schema row."""
        return self.exclude(schema_name="public")


class Operator(TenantMixin):
    """One operator renting a branded slice of the platform; its data live in the schema named by `slug`."""

    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=OperatorStatus.choices, default=OperatorStatus.ACTIVE)
    products = ArrayField(models.CharField(max_length=8, choices=Product.choices), default=list, blank=True)
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="IANA name, e.g. Europe/Madrid: tariffs' time bands and reports use it.",
    )
    currency = models.CharField(max_length=3, default="EUR", help_text="ISO 4217 code of the operator's books.")

    product_name = models.CharField(max_length=100, blank=True, help_text="Brand shown on every page.")
    logo = models.FileField(upload_to="logos/", blank=True)
    primary_colour = models.CharField(max_length=7, default="#1f4e79", validators=[colour_validator])
    accent_colour = models.CharField(max_length=7, default="#f0a030", validators=[colour_validator])
    support_email = models.EmailField(blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Provisioning creates the schema itself (tenants.services.operator_provision).
    auto_create_schema = False
    auto_drop_schema = True

    objects = OperatorQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.schema_name})"

    @property
    def slug(self) -> str:
        return self.schema_name

    @property
    def brand(self) -> str:
        return self.product_name or self.name

    @property
    def is_suspended(self) -> bool:
        return self.status == OperatorStatus.SUSPENDED


class Domain(DomainMixin):
    """A host name that reaches one operator (or, for the public row, the platform console)."""

    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain
