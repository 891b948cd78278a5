from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import BrinIndex
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from core.models import Customer

from .choices import (
    AccountKind,
    CdrFormatKind,
    CdrStatus,
    EntryKind,
    Leg,
    RerateStatus,
    ReservationStatus,
    Service,
    TariffKind,
)

# What the rating engine accepts (billing.rating): prices below 1,000,000, increments up to a day.
MAX_PRICE = Decimal(1_000_000)
MAX_INCREMENT_SECONDS = 86_400
_PRICE_VALIDATORS = [MinValueValidator(Decimal(0)), MaxValueValidator(MAX_PRICE - Decimal("0.000001"))]


def money_field(**kwargs) -> models.DecimalField:
    # Full precision per record (6 decimals); statements round once per line (settings.MONEY_LINE_DECIMAL_PLACES).
    return models.DecimalField(max_digits=20, decimal_places=6, **kwargs)


class Tariff(models.Model):
    """A named rate deck: what the operator charges a customer, or what a supplier trunk costs it."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=TariffKind.choices, default=TariffKind.PRICE)
    currency = models.CharField(max_length=3)
    is_default_cost = models.BooleanField(
        default=False, help_text="The supplier cost of calls that leave by no named trunk (one cost tariff at most)."
    )
    # Class-grid pricing (freephone): how a grid call's minutes are billed.
    grid_first_increment = models.PositiveIntegerField(default=60)
    grid_next_increment = models.PositiveIntegerField(default=60)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default_cost"], condition=models.Q(is_default_cost=True), name="uniq_default_cost_tariff"
            )
        ]

    def __str__(self) -> str:
        return self.name


class TimeBand(models.Model):
    """A named period of the week (peak, off-peak, weekend) of one tariff, in the operator's time zone."""

    tariff = models.ForeignKey(Tariff, on_delete=models.CASCADE, related_name="time_bands")
    name = models.CharField(max_length=32)
    weekdays = ArrayField(models.PositiveSmallIntegerField(), help_text="0 Monday … 6 Sunday")
    start = models.TimeField()
    end = models.TimeField(help_text="Exclusive; before start means the band runs past midnight.")

    class Meta:
        ordering = ["tariff", "name"]
        constraints = [models.UniqueConstraint(fields=["tariff", "name"], name="uniq_time_band_name")]

    def __str__(self) -> str:
        return f"{self.tariff} {self.name}"


class Rate(models.Model):
    """One row of a rate deck: the price to numbers starting with `prefix`, from `effective_from` on.

    The database holds every rule the rating engine checks (digits-only prefix, prices 0 ≤ x < 1,000,000 with 6
    decimals, increments in range), so big decks load without checking each rate again (``rating.Rate.stored``).
    """

    tariff = models.ForeignKey(Tariff, on_delete=models.CASCADE, related_name="rates")
    prefix = models.CharField(
        max_length=15, validators=[RegexValidator(r"^[0-9]{1,15}$", "Digits only (E.164 without +).")]
    )
    destination = models.CharField(max_length=100, blank=True)
    service = models.CharField(max_length=8, choices=Service.choices, default=Service.VOICE)
    rate = money_field(
        help_text="Per minute for voice; per part / event for SMS and USSD.", validators=_PRICE_VALIDATORS
    )
    connect_fee = money_field(default=Decimal(0), validators=_PRICE_VALIDATORS)
    first_increment = models.PositiveIntegerField(default=60, validators=[MaxValueValidator(MAX_INCREMENT_SECONDS)])
    next_increment = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(MAX_INCREMENT_SECONDS)]
    )
    min_charge = money_field(default=Decimal(0), validators=_PRICE_VALIDATORS)
    effective_from = models.DateTimeField(null=True, blank=True, help_text="Empty: immediately.")
    time_band = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["tariff", "prefix", "effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["tariff", "prefix", "service", "effective_from", "time_band"],
                name="uniq_rate_version",
                nulls_distinct=False,
            ),
            models.CheckConstraint(condition=models.Q(prefix__regex=r"^[0-9]{1,15}$"), name="rate_prefix_digits"),
            models.CheckConstraint(
                condition=models.Q(rate__gte=0, rate__lt=MAX_PRICE)
                & models.Q(connect_fee__gte=0, connect_fee__lt=MAX_PRICE)
                & models.Q(min_charge__gte=0, min_charge__lt=MAX_PRICE),
                name="rate_prices_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(first_increment__lte=MAX_INCREMENT_SECONDS)
                & models.Q(next_increment__gte=1, next_increment__lte=MAX_INCREMENT_SECONDS),
                name="rate_increments_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix} {self.destination} {self.rate}"

    @property
    def increment(self) -> str:
        return f"{self.first_increment}/{self.next_increment}"


class Trunk(models.Model):
    """A supplier route calls leave by (a SIP trunk, an interconnect); its cost tariff prices what it costs us."""

    name = models.CharField(max_length=80, unique=True, help_text="As the switch names it in CDRs (dstchannel).")
    cost_tariff = models.ForeignKey(
        Tariff, on_delete=models.PROTECT, related_name="trunks", limit_choices_to={"kind": TariffKind.COST}
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TariffClass(models.Model):
    """A group of origination or termination directions priced as one row or column of a tariff's grid.

    Numbers fall in the class with the longest matching prefix (fixed, mobile, toll-free, own network…).
    """

    tariff = models.ForeignKey(Tariff, on_delete=models.CASCADE, related_name="classes")
    direction = models.CharField(max_length=12, choices=Leg.choices)
    name = models.CharField(max_length=80)
    prefixes = ArrayField(models.CharField(max_length=15), default=list, blank=True)
    leg_rate = money_field(
        default=Decimal(0),
        help_text="Origination classes: what the origination leg alone costs per minute (a call to the own IVR).",
    )
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["tariff", "direction", "position", "name"]
        verbose_name_plural = "tariff classes"
        constraints = [models.UniqueConstraint(fields=["tariff", "direction", "name"], name="uniq_tariff_class")]

    def __str__(self) -> str:
        return f"{self.get_direction_display()}: {self.name}"


class ClassRate(models.Model):
    """One cell of a tariff's class grid: the total price per minute from an origination to a termination class."""

    tariff = models.ForeignKey(Tariff, on_delete=models.CASCADE, related_name="class_rates")
    origination = models.ForeignKey(TariffClass, on_delete=models.CASCADE, related_name="+")
    termination = models.ForeignKey(TariffClass, on_delete=models.CASCADE, related_name="+")
    rate = money_field()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tariff", "origination", "termination"]
        constraints = [
            models.UniqueConstraint(fields=["origination", "termination"], name="uniq_class_rate_cell"),
        ]

    def __str__(self) -> str:
        return f"{self.origination.name} → {self.termination.name}: {self.rate}"


class MinutePackage(models.Model):
    """Included and volume-tiered minutes per calendar month for calls to a group of destination prefixes."""

    name = models.CharField(max_length=100, unique=True)
    prefixes = ArrayField(models.CharField(max_length=15))
    included_minutes = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal(0))
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text='After the included minutes: [{"up_to_minutes": "1000", "rate": "0.05"}, {"up_to_minutes": null, '
        '"rate": "0.03"}]; minutes beyond a bounded last tier are priced from the rate deck.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Account(models.Model):
    """A balance: of one customer (subscriber, PBX client, SMS client, partner) or of the operator itself.

    `balance` always equals the sum of its ledger entries (kept in the same transaction as each
    entry); `reserved` is the sum of its held reservations.
    """

    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts")
    name = models.CharField(max_length=200)
    code = models.CharField(max_length=80, unique=True, help_text="What CDRs name it by (e.g. Asterisk accountcode).")
    currency = models.CharField(max_length=3)
    kind = models.CharField(max_length=8, choices=AccountKind.choices, default=AccountKind.PREPAID)
    credit_limit = money_field(default=Decimal(0), help_text="How far below zero a prepaid account may go.")
    tariff = models.ForeignKey(Tariff, null=True, blank=True, on_delete=models.PROTECT, related_name="accounts")
    packages = models.ManyToManyField(MinutePackage, blank=True, related_name="accounts")
    balance = money_field(default=Decimal(0), editable=False)
    reserved = money_field(default=Decimal(0), editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"

    @property
    def available(self) -> Decimal:
        """What a prepaid account can still spend: balance + credit limit - held reservations."""
        return self.balance + self.credit_limit - self.reserved


class AppendOnly(models.Model):
    """Rows that are written once and never changed or deleted: the books are corrected by new rows."""

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError(f"{type(self).__name__} rows are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError(f"{type(self).__name__} rows are append-only")


class Cdr(models.Model):
    """One leg of one call, or one SMS/USSD event, as the switch or SMSC reported it, with its rating."""

    source = models.CharField(max_length=40, help_text="Where it came from: asterisk, freephone, api, sms…")
    source_id = models.CharField(max_length=120)
    service = models.CharField(max_length=8, choices=Service.choices, default=Service.VOICE)
    leg = models.CharField(max_length=12, choices=Leg.choices, default=Leg.ORIGINATION)
    correlation_id = models.CharField(max_length=120, blank=True)
    account_code = models.CharField(max_length=80, blank=True)
    # No database FK constraint: its per-row check would double the cost of importing a million CDRs (measured:
    # ~10 s per million on 2 cores). The rating engine only ever sets an account it has just read, and accounts
    # are never deleted (PROTECT here, and their ledger entries keep a real FK).
    account = models.ForeignKey(
        Account, null=True, blank=True, on_delete=models.PROTECT, related_name="cdrs", db_constraint=False
    )
    caller = models.CharField(max_length=32, blank=True)
    callee = models.CharField(max_length=32)
    start = models.DateTimeField()
    duration = models.PositiveIntegerField(default=0)
    billsec = models.PositiveIntegerField(default=0)
    units = models.PositiveIntegerField(default=0, help_text="Message parts or USSD events.")
    status = models.CharField(max_length=8, choices=CdrStatus.choices, default=CdrStatus.UNRATED)
    unrated_reason = models.CharField(max_length=200, blank=True)
    matched_prefix = models.CharField(max_length=15, blank=True)
    destination = models.CharField(max_length=100, blank=True)
    billed_seconds = models.PositiveIntegerField(default=0)
    package_seconds = models.PositiveIntegerField(default=0, help_text="Billed seconds a minute package priced.")
    trunk = models.CharField(max_length=80, blank=True)
    price = money_field(null=True, blank=True)
    cost = money_field(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    extra = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-start"]
        constraints = [models.UniqueConstraint(fields=["source", "source_id"], name="uniq_cdr_source_id")]
        # Chosen for a table that takes millions of rows per import (each B-tree costs every insert; measured with
        # billing/bench_ingest.py): account (its FK index) and a BRIN on start (tiny, nearly free to keep) serve
        # statements and reports by period; unrated CDRs and CDRs of unknown cost (few) and call legs (correlation
        # ids) get partial indexes.
        indexes = [
            BrinIndex(fields=["start"], name="billing_cdr_start_brin"),
            models.Index(fields=["start"], condition=models.Q(status="unrated"), name="billing_cdr_unrated"),
            models.Index(
                fields=["start"], condition=models.Q(status="rated", cost__isnull=True), name="billing_cdr_cost_unknown"
            ),
            models.Index(
                fields=["correlation_id"], condition=~models.Q(correlation_id=""), name="billing_cdr_correlation"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source}:{self.source_id}"

    @property
    def margin(self) -> Decimal | None:
        if self.price is None or self.cost is None:
            return None
        return self.price - self.cost


class LedgerEntry(AppendOnly):
    """One movement of money on one account; its idempotency key makes every charge happen once."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=12, choices=EntryKind.choices)
    amount = money_field(help_text="Signed: top-ups and refunds are positive, charges negative.")
    idempotency_key = models.CharField(max_length=200, unique=True)
    description = models.CharField(max_length=300, blank=True)
    cdr = models.ForeignKey(Cdr, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} on {self.account_id}"


class Reservation(models.Model):
    """Credit held for a running call or message (RFC 4006 style): committed at the end, the rest released.

    A *credit grant* (``undrawn`` set) is a reservation many uses draw from, as an online charging system grants a
    quota: ``amount`` is what it still holds, ``undrawn`` the part of it no use has drawn yet (see
    ``billing.services.grants``).
    """

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="reservations")
    amount = money_field()
    undrawn = money_field(null=True, blank=True, help_text="A credit grant's part not drawn by any use yet.")
    committed_amount = money_field(null=True, blank=True)
    status = models.CharField(max_length=10, choices=ReservationStatus.choices, default=ReservationStatus.HELD)
    idempotency_key = models.CharField(max_length=200, unique=True)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["account"], name="billing_reservation_grants", condition=models.Q(undrawn__gt=0, status="held")
            )
        ]

    def __str__(self) -> str:
        return f"{self.status} {self.amount} on {self.account_id}"


class PackageUsage(models.Model):
    """The counter of one account's seconds in one minute package for one period (calendar month)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="package_usage")
    package = models.ForeignKey(MinutePackage, on_delete=models.CASCADE, related_name="usage")
    period_start = models.DateField()
    used_seconds = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            models.UniqueConstraint(fields=["account", "package", "period_start"], name="uniq_package_usage"),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} {self.package_id} {self.period_start}: {self.used_seconds}s"


class FreephoneNumber(models.Model):
    """A freephone (8-800) number and the account of its owner, who pays for the calls to it."""

    number = models.CharField(max_length=32, unique=True)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="freephone_numbers")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return self.number


class CdrFormat(models.Model):
    """A saved column mapping for CDR files: the freephone platform's profile or a generic CSV's columns."""

    name = models.CharField(max_length=80, unique=True)
    kind = models.CharField(max_length=12, choices=CdrFormatKind.choices)
    columns = models.JSONField(help_text='Field → 0-based column (negative counts from the end): {"caller": 6, …}')
    delimiter = models.CharField(max_length=1, default=",")
    has_header = models.BooleanField(default=False)
    time_format = models.CharField(max_length=40, blank=True, help_text="strftime pattern; empty: ISO 8601.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RerateRun(models.Model):
    """A what-if re-rating of a period under a tariff; confirming it posts the differences as adjustments.

    Computed and confirmed on a worker (``billing.services.rerate``): ``status`` and the progress counts say where
    it is; a failed run keeps why (``error_code``: ``rerate_stale`` when the period changed before confirming).
    """

    tariff = models.ForeignKey(
        Tariff, null=True, blank=True, on_delete=models.PROTECT, help_text="Candidate tariff; empty: each current one."
    )
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.PROTECT, help_text="Empty: all.")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=RerateStatus.choices, default=RerateStatus.QUEUED)
    summary = models.JSONField(default=dict, blank=True)
    progress_total = models.PositiveBigIntegerField(default=0, help_text="CDRs of the period in scope.")
    progress_done = models.PositiveBigIntegerField(default=0, help_text="Of which re-rated (or skipped) so far.")
    error_code = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"rerate {self.pk} {self.period_start:%Y-%m-%d}…{self.period_end:%Y-%m-%d} {self.status}"
