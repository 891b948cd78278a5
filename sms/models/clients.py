import ipaddress
import secrets

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models

from billing.models import Account
from core.models import Customer


def callback_secret_generate() -> str:
    """A fresh HMAC secret for a client's delivery-report callbacks (shown to the client, stored as is)."""
    return secrets.token_hex(32)


def default_duplicate_window() -> int:
    return int(getattr(settings, "SMS_DUPLICATE_WINDOW_S", 600))


def validate_networks(values: list[str]) -> None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValidationError(f"{value!r} is not an IP address or network (e.g. 203.0.113.0/24).") from exc


class SmsClient(models.Model):
    """The SMS settings of one customer of the operator: who pays, what it may send as, from where, how fast.

    The customer's logins and their API keys are the client's credentials; its billing account is charged per part.
    """

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="sms_client")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="sms_clients")
    sender_ids = ArrayField(
        models.CharField(max_length=16),
        default=list,
        blank=True,
        help_text="Sender ids (alphanumeric up to 11, or a number) the client may send as; the first is the default.",
    )
    allowed_ips = ArrayField(
        models.CharField(max_length=50),
        default=list,
        blank=True,
        validators=[validate_networks],
        help_text="Addresses or networks the API may be called from; empty: anywhere.",
    )
    tps_limit = models.PositiveIntegerField(
        default=100, help_text="Messages per second the API accepts from this client (0: no limit)."
    )
    max_queued = models.PositiveIntegerField(
        default=100_000, help_text="Messages that may wait for submission at once; beyond it the API answers 429."
    )
    duplicate_window_s = models.PositiveIntegerField(
        default=default_duplicate_window,
        help_text="The same text to the same number within this many seconds is refused as a duplicate (0: off).",
    )
    callback_url = models.URLField(blank=True, help_text="Delivery reports are POSTed here (JSON, HMAC-signed).")
    callback_secret = models.CharField(max_length=64, default=callback_secret_generate)
    default_route = models.ForeignKey(
        "sms.Route",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Tried after the client's own routes and before the operator's defaults.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["customer__name"]
        verbose_name = "SMS client"

    def __str__(self) -> str:
        return str(self.customer)

    @property
    def default_sender(self) -> str | None:
        return self.sender_ids[0] if self.sender_ids else None
