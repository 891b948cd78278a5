from rest_framework.permissions import BasePermission

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
