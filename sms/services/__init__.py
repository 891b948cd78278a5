"""Writes of the SMS app. Views, admin, tasks and the submitter (sms.runner) all go through these.

`accept`: a client's request → stored, reserved messages; `submission`: claim/charge, SMSC answers, receipts, MO,
expiry, recovery; `events` and `callbacks`: status events and their signed delivery to clients; `fraud`: limits;
`clients`: clients, secrets, list imports; `housekeeping`: the periodic task; `wakeups`: queueing the drains.
"""

from .accept import AcceptedRequest, CreditInsufficient, RequestInvalid, RequestRefused, messages_accept
from .callbacks import callback_post, callback_sign, callback_signature_valid, callbacks_send_due
from .clients import ListImport, list_entries_import, sms_client_create, sms_client_secret_rotate
from .housekeeping import fraud_alert_send, sms_maintain
from .submission import (
    incoming_record,
    messages_claim,
    messages_expire,
    receipts_record,
    submission_results_record,
    submissions_recover,
)

__all__ = [
    "AcceptedRequest",
    "CreditInsufficient",
    "ListImport",
    "RequestInvalid",
    "RequestRefused",
    "callback_post",
    "callback_sign",
    "callback_signature_valid",
    "callbacks_send_due",
    "fraud_alert_send",
    "incoming_record",
    "list_entries_import",
    "messages_accept",
    "messages_claim",
    "messages_expire",
    "receipts_record",
    "sms_client_create",
    "sms_client_secret_rotate",
    "sms_maintain",
    "submission_results_record",
    "submissions_recover",
]
