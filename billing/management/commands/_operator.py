from django.core.management.base import CommandError

from tenants.models import Operator


def operator_get(slug: str) -> Operator:
    operator = Operator.objects.operators().filter(schema_name=slug).first()
    if operator is None:
        raise CommandError(f"No operator with slug {slug!r}.")
    return operator
