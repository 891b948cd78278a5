from django.db import models


class MessageStatus(models.TextChoices):
    """Where a message stands. `accepted` and `submitting` are still the platform's; the rest the SMSC's or final."""

    ACCEPTED = "accepted", "Accepted (queued)"
    SUBMITTING = "submitting", "Being submitted"
    SUBMITTED = "submitted", "Submitted to the SMSC"
    DELIVERED = "delivered", "Delivered"
    UNDELIVERED = "undelivered", "Undelivered"
    EXPIRED = "expired", "Expired"
    REJECTED = "rejected", "Rejected"


# Statuses a message never leaves.
FINAL_STATUSES = frozenset(
    {MessageStatus.DELIVERED, MessageStatus.UNDELIVERED, MessageStatus.EXPIRED, MessageStatus.REJECTED}
)


class EventStatus(models.TextChoices):
    """The status changes a client sees (the internal `submitting` step is not one of them)."""

    ACCEPTED = "accepted", "Accepted"
    SUBMITTED = "submitted", "Submitted"
    DELIVERED = "delivered", "Delivered"
    UNDELIVERED = "undelivered", "Undelivered"
    EXPIRED = "expired", "Expired"
    REJECTED = "rejected", "Rejected"


class PartStatus(models.TextChoices):
    SUBMITTED = "submitted", "Accepted by the SMSC"
    REJECTED = "rejected", "Refused by the SMSC"
    DELIVERED = "delivered", "Delivered"
    UNDELIVERED = "undelivered", "Undelivered"
    EXPIRED = "expired", "Expired"


class RejectReason(models.TextChoices):
    """Why the platform refused a message itself; shown to the client as `error_code`."""

    BLACKLIST = "blacklisted", "The number is blacklisted"
    DND = "dnd", "The number is on the do-not-disturb list"
    OPT_OUT = "opted_out", "The number opted out of messages from this client"
    SPAM = "spam", "The text matches a spam rule"
    DUPLICATE = "duplicate", "The same text was sent to this number moments ago"
    FRAUD_LIMIT = "fraud_limit", "A fraud limit was reached"
    NO_ROUTE = "no_route", "No route reaches this destination"
    SMSC_REJECTED = "smsc_rejected", "Every gateway refused the message"
    VALIDITY = "validity", "The validity period ended before the message could be sent"
    CANCELLED = "cancelled", "Cancelled by the client"


class BindMode(models.TextChoices):
    TRANSCEIVER = "transceiver", "Transceiver (one bind)"
    TRANSMITTER_RECEIVER = "transmitter_receiver", "Transmitter + receiver (two binds)"


class DefaultEncoding(models.TextChoices):
    GSM7 = "gsm7", "GSM 03.38 when the text fits, else UCS-2"
    UCS2 = "ucs2", "Always UCS-2"


class ListKind(models.TextChoices):
    BLACKLIST = "blacklist", "Blacklist"
    DND = "dnd", "Do not disturb"
    OPT_OUT = "optout", "Opt-out"


class SpamRuleKind(models.TextChoices):
    KEYWORD = "keyword", "Keyword or phrase (whole words, any case)"
    REGEX = "regex", "Regular expression (any case)"


class FraudScope(models.TextChoices):
    CLIENT = "client", "Per client"
    DESTINATION_OPERATOR = "destination_operator", "Per client and destination mobile operator"
    SENDER = "sender", "Per client and sender id"


class FraudMetric(models.TextChoices):
    COUNT = "count", "Messages"
    AMOUNT = "amount", "Amount charged"


class FraudPeriod(models.TextChoices):
    MINUTE = "minute", "Minute"
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


FRAUD_PERIOD_SECONDS = {FraudPeriod.MINUTE: 60, FraudPeriod.HOUR: 3600, FraudPeriod.DAY: 86400}


class CallbackState(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Gave up"
