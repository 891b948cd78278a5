"""The base every API viewset stands on: it scopes querysets to the caller's customer."""

from rest_framework import viewsets

from core.selectors import customer_for_user


class CustomerScopedMixin:
    """Operator staff see the whole schema; a customer's login sees only rows of its customer.

    Subclasses name the path from their model to the customer in `customer_field`
    (e.g. ``"account__customer"``); ``None`` means the rows are the operator's alone and customer
    logins see none of them.
    """

    customer_field: str | None = "customer"

    @property
    def caller_customer(self):
        return customer_for_user(user=self.request.user)

    def get_queryset(self):
        queryset = super().get_queryset()
        customer = self.caller_customer
        if customer is None:
            return queryset
        if self.customer_field is None:
            return queryset.none()
        return queryset.filter(**{self.customer_field: customer})


class CustomerScopedViewSet(CustomerScopedMixin, viewsets.ModelViewSet):
    pass


class CustomerScopedReadOnlyViewSet(CustomerScopedMixin, viewsets.ReadOnlyModelViewSet):
    pass
