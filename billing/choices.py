from django.db import models


class Service(models.TextChoices):
    VOICE = "voice", "Voice"
    SMS = "sms", "SMS"
    USSD = "ussd", "USSD"


class TariffKind(models.TextChoices):
    PRICE = "price", "Customer price"
    COST = "cost", "Supplier cost"


class AccountKind(models.TextChoices):
    PREPAID = "prepaid", "Prepaid"
    POSTPAID = "postpaid", "Postpaid"


class EntryKind(models.TextChoices):
    TOPUP = "topup", "Top-up"
    CHARGE = "charge", "Charge"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"


class ReservationStatus(models.TextChoices):
    HELD = "held", "Held"
    COMMITTED = "committed", "Committed"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


class Leg(models.TextChoices):
    ORIGINATION = "origination", "Origination (A-leg)"
    TERMINATION = "termination", "Termination (B-leg)"


class CdrStatus(models.TextChoices):
    RATED = "rated", "Rated"
    UNRATED = "unrated", "Unrated"


class CdrFormatKind(models.TextChoices):
    FREEPHONE = "freephone", "Freephone platform record"
    GENERIC = "generic", "Generic CSV"


class RerateStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Re-rating"
    READY = "ready", "What-if ready"
    CONFIRMING = "confirming", "Confirming"
    CONFIRMED = "confirmed", "Confirmed"
    FAILED = "failed", "Failed"
