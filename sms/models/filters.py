import re
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from billing.models import money_field

from ..choices import FraudMetric, FraudPeriod, FraudScope, ListKind, SpamRuleKind


class ListEntryQuerySet(models.QuerySet):
    def for_client(self, client_id: int):
        """Entries that bind a client: the operator-wide ones and its own."""
        return self.filter(models.Q(client__isnull=True) | models.Q(client_id=client_id))


class ListEntry(models.Model):
    """One number on the blacklist, the do-not-disturb list or the opt-out list, operator-wide or for one client."""

    kind = models.CharField(max_length=10, choices=ListKind.choices)
    number = models.CharField(max_length=16, help_text="E.164 with +.")
    client = models.ForeignKey(
        "sms.SmsClient",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="list_entries",
        help_text="Empty: for every client of the operator.",
    )
    note = models.CharField(max_length=200, blank=True, help_text="Why it is listed (an import, an incoming STOP…).")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ListEntryQuerySet.as_manager()

    class Meta:
        ordering = ["kind", "number"]
        verbose_name_plural = "list entries"
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "number", "client"], name="uniq_sms_list_entry", nulls_distinct=False
            )
        ]
        indexes = [models.Index(fields=["number"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.number}"


class SpamRule(models.Model):
    """A text the operator refuses to carry: a keyword/phrase (whole words) or a regular expression, any case."""

    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=SpamRuleKind.choices, default=SpamRuleKind.KEYWORD)
    pattern = models.CharField(max_length=500)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.kind == SpamRuleKind.REGEX:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValidationError({"pattern": f"Not a valid regular expression: {exc}."}) from exc
        elif not self.pattern.strip():
            raise ValidationError({"pattern": "A keyword cannot be blank."})


class FraudLimit(models.Model):
    """At most `limit` messages (or that much money) per period for a client, split by scope; more is refused.

    Scope `client` counts all of a client's traffic; `destination_operator` counts it per destination mobile operator
    (or only towards `mobile_operator` when set); `sender` per sender id. Without `client` it applies to every client,
    each counted on its own. When a limit is hit the operator's staff get a live alert and an email.
    """

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=24, choices=FraudScope.choices, default=FraudScope.CLIENT)
    metric = models.CharField(max_length=8, choices=FraudMetric.choices, default=FraudMetric.COUNT)
    period = models.CharField(max_length=8, choices=FraudPeriod.choices, default=FraudPeriod.HOUR)
    limit = money_field(validators=[MinValueValidator(Decimal(0))], help_text="Messages, or money for `amount`.")
    client = models.ForeignKey(
        "sms.SmsClient", null=True, blank=True, on_delete=models.CASCADE, related_name="fraud_limits"
    )
    mobile_operator = models.CharField(max_length=80, blank=True, help_text="Only for scope destination_operator.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
