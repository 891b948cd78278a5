import hashlib
import secrets

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from .choices import CustomerKind

subdomain_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", "Lower-case letters, digits and -, as in a host name."
)


class CustomerQuerySet(models.QuerySet):
    def active(self):
        return self.filter(is_active=True)


class Customer(models.Model):
    """One customer of an operator: a PBX client company, an SMS client or partner, or a subscriber.

    Product apps hang their own details off it; billing gives it an account. Rows live in the
    operator's schema (the table also exists, unused, in the public schema).
    """

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=CustomerKind.choices)
    subdomain = models.CharField(
        max_length=63,
        unique=True,
        null=True,
        blank=True,
        validators=[subdomain_validator],
        help_text="Reaches the client panel at <subdomain>.<operator domain>.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CustomerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CustomerMember(models.Model):
    """A login that belongs to one customer; users without one are the operator's own staff."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="customer_member")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="members")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["customer", "user"]

    def __str__(self) -> str:
        return f"{self.user} @ {self.customer}"


KEY_PREFIX = "oc_"


def hash_api_key(raw: str) -> str:
    # Keys are 256 random bits, so a fast digest is enough: there is nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class ApiKey(models.Model):
    """One API key of one user; only its SHA-256 is stored, the key itself is shown once at creation.

    A key lives in the schema of its domain family (an operator's, or the platform's public one), so it
    authenticates nowhere else.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to recognise it.")
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return KEY_PREFIX + secrets.token_urlsafe(32)
