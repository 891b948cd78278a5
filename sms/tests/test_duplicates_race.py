"""Duplicate blocking under concurrency: requests racing with the same message, each on its own connection."""

import threading

from django.db import connections
from django_tenants.utils import schema_context

from core.models import Customer
from sms.models import Message
from sms.services import messages_accept

from .conftest import operator_for_tests, sms_world_make

SCHEMA = "s1dup"
RACERS = 6


def test_racing_copies_of_one_message_are_accepted_once(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock(), operator_for_tests(SCHEMA):
        world = sms_world_make(schema=SCHEMA, staff=f"admin@{SCHEMA}.localhost", duplicate_window_s=600)
        start = threading.Barrier(RACERS, timeout=30)
        answers: list = []

        def send(text: str) -> None:
            try:
                with schema_context(SCHEMA):
                    customer = Customer.objects.get(pk=world.client.customer_id)
                    start.wait()
                    accepted = messages_accept(customer=customer, payload={"to": "+34612345678", "text": text})
                    answers.append(accepted.messages[0].status)
            finally:
                connections.close_all()

        # Given six copies of one message and, alongside, six different texts to the same number, all at once
        for texts in (["same text"] * RACERS, [f"text {i}" for i in range(RACERS)]):
            threads = [threading.Thread(target=send, args=(text,)) for text in texts]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        # Then exactly one copy is accepted and the five others refused as duplicates; different texts all pass
        assert sorted(answers) == ["accepted"] * (RACERS + 1) + ["rejected"] * (RACERS - 1)
        with schema_context(SCHEMA):
            same = Message.objects.filter(text="same text")
            assert same.filter(status="accepted").count() == 1
            assert set(same.filter(status="rejected").values_list("error_code", flat=True)) == {"duplicate"}
