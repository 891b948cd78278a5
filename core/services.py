"""Writes for customers, their logins and API keys; every caller (admin, API, CLI) goes through these."""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import ApiKey, Customer, CustomerMember, hash_api_key

User = get_user_model()


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    raw_key: str  # shown once, never stored


def api_key_create(*, user, name: str) -> IssuedApiKey:
    raw = ApiKey.generate()
    api_key = ApiKey.objects.create(user=user, name=name, prefix=raw[:12], hashed_key=hash_api_key(raw))
    return IssuedApiKey(api_key=api_key, raw_key=raw)


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record the key's last use, at most once a minute so a busy key does not write on every call."""
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        api_key.last_used_at = now


def user_create(*, email: str, password: str | None = None, is_staff: bool = False, is_superuser: bool = False):
    """A login in the current schema; without a password it can only be entered through a reset link."""
    user = User(username=email.lower(), email=email.lower(), is_staff=is_staff, is_superuser=is_superuser)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save()
    return user


@transaction.atomic
def customer_create(
    *,
    name: str,
    kind: str,
    subdomain: str | None = None,
    admin_email: str | None = None,
    admin_password: str | None = None,
) -> Customer:
    customer = Customer(name=name, kind=kind, subdomain=subdomain or None)
    customer.full_clean()
    customer.save()
    if admin_email:
        user = user_create(email=admin_email, password=admin_password)
        CustomerMember.objects.create(user=user, customer=customer)
    return customer
