"""The SMS aggregator's rows, in the operator's schema: clients, gateways and routes, filters, messages and events."""

from .clients import SmsClient
from .filters import FraudLimit, ListEntry, SpamRule
from .jobs import JobRowOutcome, JobStatus, SmsJob, SmsJobRow
from .messages import CallbackAttempt, CallbackBatch, IncomingMessage, Message, MessageEvent, MessagePart
from .routing import Gateway, NumberPrefix, Route

__all__ = [
    "CallbackAttempt",
    "CallbackBatch",
    "FraudLimit",
    "Gateway",
    "IncomingMessage",
    "JobRowOutcome",
    "JobStatus",
    "ListEntry",
    "Message",
    "MessageEvent",
    "MessagePart",
    "NumberPrefix",
    "Route",
    "SmsClient",
    "SmsJob",
    "SmsJobRow",
    "SpamRule",
]
