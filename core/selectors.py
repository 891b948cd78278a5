"""Reads shared by every app: who a user is for (staff or which customer)."""

from .models import ApiKey, Customer, hash_api_key


def customer_for_user(*, user) -> Customer | None:
    """The customer a login belongs to, or None for the operator's staff (and anonymous users)."""
    if not getattr(user, "is_authenticated", False):
        return None
    member = getattr(user, "customer_member", None)
    return member.customer if member else None


def api_key_find(*, raw_key: str) -> ApiKey | None:
    return (
        ApiKey.objects.usable()
        .select_related("user", "user__customer_member__customer")
        .filter(hashed_key=hash_api_key(raw_key))
        .first()
    )
