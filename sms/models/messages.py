from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.db.models.functions import Cast
from django.db.models.sql.where import AND, WhereNode

from billing.models import Cdr, Reservation, money_field
from core.models import Customer

from ..choices import FINAL_STATUSES, CallbackState, EventStatus, MessageStatus, PartStatus
from .routing import Gateway, Route


class MessageQuerySet(models.QuerySet):
    def pending(self):
        """Accepted and not yet taken by a submitter (scheduled ones included)."""
        return self.filter(status=MessageStatus.ACCEPTED)

    def due(self, now):
        """Pending messages that may be submitted now: their scheduled time and any retry pause are past."""
        return self.pending().filter(not_before__lte=now)

    def in_flight(self):
        """Taken by a submitter or waiting for the SMSC's delivery receipt."""
        return self.filter(status__in=[MessageStatus.SUBMITTING, MessageStatus.SUBMITTED])

    def final(self):
        return self.filter(status__in=FINAL_STATUSES)

    def expired_by(self, now):
        """Still queued after their validity ended."""
        return self.pending().filter(valid_until__lt=now)

    def of_customer(self, customer):
        return self.filter(customer=customer)


CDR_SOURCE = "sms"  # billing.Cdr.source of a message's charge; its source_id is the message id


class ChargeCdr(models.ForeignObject):
    """A message's charge record in billing (`Cdr` with source "sms" and source_id the message id), if it was
    charged: its `units` and `price` are the parts and credit kept after any refund, its `cost` the gateways' cost.

    Joins ``LEFT JOIN billing_cdr ON source = 'sms' AND source_id = message.id::text`` (the CDR's unique index serves
    it). A private field, as Django's GenericRelation is: no column, no migration.
    """

    def __init__(self, **kwargs):
        kwargs.update(from_fields=["id"], to_fields=["source_id"], on_delete=models.DO_NOTHING, related_name="+")
        kwargs.setdefault("null", True)
        super().__init__(Cdr, **kwargs)

    def contribute_to_class(self, cls, name, **kwargs):
        kwargs["private_only"] = True
        super().contribute_to_class(cls, name, **kwargs)

    def get_joining_fields(self, reverse_join=False):
        return ()  # the whole condition is in get_extra_restriction (the id must be cast to text, not the reverse)

    def get_extra_restriction(self, alias, related_alias):
        source, source_id = Cdr._meta.get_field("source"), Cdr._meta.get_field("source_id")
        message_id = Cast(self.model._meta.pk.get_col(related_alias), models.CharField())
        return WhereNode(
            [
                source.get_lookup("exact")(source.get_col(alias), CDR_SOURCE),
                source_id.get_lookup("exact")(source_id.get_col(alias), message_id),
            ],
            connector=AND,
        )

    def get_extra_descriptor_filter(self, instance):
        return {"source": CDR_SOURCE}


class Message(models.Model):
    """One short message a client asked the platform to send to one number, and what became of it.

    `price` is what the client pays (parts × the route's price per part), `cost` what the gateway costs the operator;
    both are fixed when the message is accepted (cost is updated if a failover sends it through another gateway).
    """

    # No index of its own: sms_msg_customer (customer, -id) serves it (every index is written on each status change).
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="sms_messages", db_index=False)
    request_id = models.UUIDField(help_text="The API request that brought it (one credit reservation per request).")
    sender = models.CharField(max_length=16)
    destination = models.CharField(max_length=16, help_text="E.164 with +.")
    text = models.TextField()
    encoding = models.CharField(max_length=4)
    length = models.PositiveIntegerField(help_text="GSM septets or UTF-16 code units.")
    parts = models.PositiveSmallIntegerField()
    price_per_part = money_field()
    price = money_field()
    cost = money_field()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=12, choices=MessageStatus.choices, default=MessageStatus.ACCEPTED)
    error_code = models.CharField(max_length=32, blank=True)
    error_description = models.CharField(max_length=200, blank=True)
    smsc_message_ids = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # No foreign key constraints on the hot relations of messages, parts and events (here and below): PostgreSQL
    # checks one with a row lock on the referenced row at every insert and every change of the column, which was
    # four lock-and-look-ups per message. Only this module's services write these columns, with ids they just read;
    # deletes still cascade or set null through Django's on_delete.
    route = models.ForeignKey(
        Route, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    gateway = models.ForeignKey(
        Gateway, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    route_chain = ArrayField(
        models.BigIntegerField(), default=list, blank=True, help_text="Route ids in failover order, one per gateway."
    )
    tried_gateways = ArrayField(
        models.BigIntegerField(), default=list, blank=True, help_text="Gateways that refused it for good."
    )
    client_reference = models.CharField(max_length=100, blank=True)
    callback_url = models.URLField(blank=True, help_text="Overrides the client's callback URL for this message.")
    valid_until = models.DateTimeField()
    scheduled_at = models.DateTimeField(null=True, blank=True)
    country = models.CharField(max_length=2, blank=True)
    mobile_operator = models.CharField(max_length=80, blank=True)
    reservation = models.ForeignKey(  # not indexed: reservations are never deleted, only closed
        Reservation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    job = models.ForeignKey(
        "sms.SmsJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages", db_index=False
    )
    charged_at = models.DateTimeField(null=True, blank=True, help_text="When its charge was posted to the ledger.")
    refunded_at = models.DateTimeField(null=True, blank=True)
    charge_cdr = ChargeCdr()
    claimed_by = models.CharField(max_length=40, blank=True, help_text="The submitter process working on it.")
    not_before = models.DateTimeField(help_text="Not submitted before this: the scheduled time, or a retry pause.")
    submitted_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["customer", "-id"], name="sms_msg_customer"),
            models.Index(fields=["created_at"], name="sms_msg_created"),
            models.Index(fields=["customer", "destination", "created_at"], name="sms_msg_duplicates"),
            models.Index(
                fields=["customer", "client_reference"], name="sms_msg_client_ref", condition=~Q(client_reference="")
            ),
            models.Index(fields=["not_before", "id"], name="sms_msg_due", condition=Q(status="accepted")),
            models.Index(fields=["valid_until"], name="sms_msg_accepted_validity", condition=Q(status="accepted")),
            models.Index(fields=["claimed_by"], name="sms_msg_submitting", condition=Q(status="submitting")),
            models.Index(fields=["job", "status"], name="sms_msg_job", condition=Q(job__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"SMS {self.pk} to {self.destination} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class MessagePart(models.Model):
    """One submit_sm of one part of a message to one gateway, and the SMSC's answer and receipt for it.

    A part submitted again (failover, or after a crash: submission is at-least-once) gets another row.
    """

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="submits", db_constraint=False)
    part_index = models.PositiveSmallIntegerField()
    gateway = models.ForeignKey(  # indexed by sms_part_smsc_id (gateway, smsc_message_id)
        Gateway, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False, db_constraint=False
    )
    smsc_message_id = models.CharField(max_length=64, blank=True, help_text="Normalised (sms.receipts).")
    command_status = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=12, choices=PartStatus.choices)
    error_code = models.CharField(max_length=32, blank=True)
    submitted_at = models.DateTimeField()
    done_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["message", "part_index", "id"]
        indexes = [models.Index(fields=["gateway", "smsc_message_id"], name="sms_part_smsc_id")]

    def __str__(self) -> str:
        return f"part {self.part_index} of {self.message_id} via {self.gateway_id}: {self.status}"


class CallbackBatch(models.Model):
    """Status events of one client bound for one callback URL, POSTed together (one JSON body, retried whole)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="sms_callback_batches")
    url = models.URLField(max_length=500)
    body = models.TextField(help_text="The exact JSON sent (and signed).")
    event_count = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=CallbackState.choices, default=CallbackState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "callback batches"
        indexes = [models.Index(fields=["next_attempt_at"], name="sms_cb_due", condition=Q(state="pending"))]

    def __str__(self) -> str:
        return f"callback {self.pk} → {self.url} ({self.state})"


class MessageEvent(models.Model):
    """One status change of a message, with the SMSC's error code and description when it gave one."""

    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    status = models.CharField(max_length=12, choices=EventStatus.choices)
    error_code = models.CharField(max_length=32, blank=True)
    error_description = models.CharField(max_length=200, blank=True)
    callback_batch = models.ForeignKey(
        CallbackBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="events", db_constraint=False
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["message", "created_at"], name="sms_event_message")]

    def __str__(self) -> str:
        return f"{self.message_id} {self.status}"


class CallbackAttempt(models.Model):
    """One POST of a callback batch to the client's URL and how it ended."""

    batch = models.ForeignKey(CallbackBatch, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveSmallIntegerField(help_text="1 for the first try.")
    url = models.URLField(max_length=500)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True, help_text="Empty: delivered, or given up.")
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["batch", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.batch_id}: {self.status_code or self.error}"


class IncomingMessage(models.Model):
    """A mobile-originated message (MO) an upstream SMSC delivered: a subscriber's reply, a STOP, a keyword."""

    customer = models.ForeignKey(
        Customer,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sms_incoming",
        help_text="The client it was attributed to: the owner of the sender id it was sent to, or the last client "
        "that texted this subscriber.",
    )
    gateway = models.ForeignKey(Gateway, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=21, help_text="The subscriber's number.")
    destination = models.CharField(max_length=21, help_text="The number or sender id it was sent to.")
    text = models.TextField()
    data_coding = models.PositiveSmallIntegerField(default=0)
    esm_class = models.PositiveSmallIntegerField(default=0)
    is_stop = models.BooleanField(
        default=False, help_text="An opt-out request: the source was put on the opt-out list."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "incoming message"

    def __str__(self) -> str:
        return f"MO {self.source} → {self.destination}"
