from rest_framework.permissions import SAFE_METHODS, BasePermission

from core.selectors import customer_for_user


class IsOperatorStaff(BasePermission):
    """The operator's own staff (logins that belong to no customer)."""

    message = "Only the operator's staff may do this."

    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_staff and customer_for_user(user=user) is None)


class IsPlatformStaff(BasePermission):
    message = "Only platform staff may do this."

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class StaffWritesCustomersRead(BasePermission):
    """Staff do anything; a customer's login may only read its own rows (the queryset scopes them)."""

    message = "Only the operator's staff may do this."

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if customer_for_user(user=user) is None:
            return user.is_staff
        return request.method in SAFE_METHODS


class StaffOrCustomer(BasePermission):
    """The operator's staff, or a customer's login (the view scopes what it sees and does to its own rows)."""

    message = "Only the operator's staff or a customer may do this."

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated):
            return False
        return customer_for_user(user=user) is not None or user.is_staff
