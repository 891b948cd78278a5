"""The client panel's SMS page: the client's messages with their status, and today's totals."""

import zoneinfo
from datetime import datetime, time

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render
from django.utils import timezone

from core.selectors import customer_for_user

from .choices import MessageStatus
from .selectors import message_list, messages_summary, sms_client_for_customer

PAGE_SIZE = 50


@login_required
def messages_page(request):
    customer = customer_for_user(user=request.user)
    if sms_client_for_customer(customer=customer) is None:
        raise Http404("Not an SMS client.")
    status = request.GET.get("status", "")
    queryset = message_list(customer=customer)
    if status in MessageStatus.values:
        queryset = queryset.filter(status=status)
    page = Paginator(queryset.only(*_COLUMNS), PAGE_SIZE).get_page(request.GET.get("page"))
    zone = zoneinfo.ZoneInfo(getattr(request.tenant, "time_zone", "UTC"))
    midnight = datetime.combine(timezone.now().astimezone(zone).date(), time.min, tzinfo=zone)
    return render(
        request,
        "sms/messages.html",
        {
            "customer": customer,
            "page": page,
            "status": status,
            "statuses": MessageStatus.choices,
            "today": messages_summary(customer=customer, since=midnight),
        },
    )


_COLUMNS = (
    "id",
    "created_at",
    "destination",
    "sender",
    "text",
    "parts",
    "price",
    "currency",
    "status",
    "error_code",
    "error_description",
    "client_reference",
)
