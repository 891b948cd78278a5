"""Provisioning and lifecycle of operators: the one place the console, the CLI and the API call."""

import logging
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.management import call_command
from django.core.validators import validate_email
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django_tenants.clone import CloneSchema
from django_tenants.utils import schema_context, schema_exists

from .choices import OperatorStatus, Product
from .models import RESERVED_SLUGS, Domain, Operator, slug_validator

log = logging.getLogger(__name__)
TEMPLATE_SCHEMA = settings.TENANT_BASE_SCHEMA


class OperatorConflict(Exception):
    """The slug or a domain is already taken; nothing was changed."""


@dataclass(frozen=True)
class ProvisionedOperator:
    operator: Operator
    console_url: str
    admin_email: str


def public_url(host: str, path: str = "/") -> str:
    return f"{settings.PLATFORM_SCHEME}://{host}{settings.PLATFORM_PORT}{path}"


def _pending_migrations() -> list:
    executor = MigrationExecutor(connection)
    return executor.migration_plan(executor.loader.graph.leaf_nodes())


def template_schema_ensure(*, verbosity: int = 0) -> bool:
    """Create or migrate the template schema new operators are cloned from. True if it changed.

    Cloning a migrated template keeps provisioning as fast on the hundredth migration as on the
    first; checking it costs one read of the migration table.
    """
    if schema_exists(TEMPLATE_SCHEMA):
        with schema_context(TEMPLATE_SCHEMA):
            if not _pending_migrations():
                return False
    else:
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{TEMPLATE_SCHEMA}"')
    call_command("migrate_schemas", schema_name=TEMPLATE_SCHEMA, tenant=True, interactive=False, verbosity=verbosity)
    connection.set_schema_to_public()
    return True


def _validate(*, slug: str, domain: str, admin_email: str, products: list[str]) -> None:
    errors = {}
    try:
        slug_validator(slug)
        if slug in RESERVED_SLUGS or slug.startswith("pg_"):
            raise ValidationError("This slug is reserved.")
    except ValidationError as exc:
        errors["slug"] = exc.messages
    if not domain or " " in domain or domain.lower() == settings.PLATFORM_DOMAIN:
        errors["domain"] = ["Give a host name that is not the platform's own."]
    try:
        validate_email(admin_email)
    except ValidationError as exc:
        errors["admin_email"] = exc.messages
    unknown = set(products) - set(Product.values)
    if unknown:
        errors["products"] = [f"Unknown products: {', '.join(sorted(unknown))}."]
    if errors:
        raise ValidationError(errors)


def operator_provision(
    *,
    slug: str,
    name: str,
    domain: str,
    admin_email: str,
    products: list[str] | None = None,
    time_zone: str = "UTC",
    currency: str = "EUR",
    product_name: str = "",
    send_welcome: bool = True,
) -> ProvisionedOperator:
    """Create an operator: schema (cloned from the template), domain, first admin with a set-password email.

    All of it happens in one transaction (PostgreSQL DDL is transactional), so a failure at any step
    leaves no schema, domain or user behind. The same slug or domain twice raises OperatorConflict.
    """
    slug, domain, admin_email = slug.strip().lower(), domain.strip().lower(), admin_email.strip().lower()
    products = list(products or [])
    _validate(slug=slug, domain=domain, admin_email=admin_email, products=products)
    template_schema_ensure()

    with transaction.atomic():
        if Operator.objects.filter(schema_name=slug).exists() or schema_exists(slug):
            raise OperatorConflict(f"An operator with slug {slug!r} already exists.")
        if Domain.objects.filter(domain=domain).exists():
            raise OperatorConflict(f"The domain {domain!r} is already in use.")
        try:
            with transaction.atomic():
                operator = Operator.objects.create(
                    schema_name=slug,
                    name=name,
                    products=products,
                    time_zone=time_zone,
                    currency=currency,
                    product_name=product_name,
                    support_email=admin_email,
                )
                Domain.objects.create(domain=domain, tenant=operator, is_primary=True)
        except IntegrityError as exc:  # a concurrent provisioning won the race
            raise OperatorConflict(f"An operator with slug {slug!r} or domain {domain!r} already exists.") from exc
        CloneSchema().clone_schema(TEMPLATE_SCHEMA, slug, "DATA")
        with schema_context(slug):
            from core.services import user_create

            admin = user_create(email=admin_email, is_staff=True, is_superuser=True)
            reset_path = (
                f"/accounts/reset/{urlsafe_base64_encode(force_bytes(admin.pk))}/"
                f"{default_token_generator.make_token(admin)}/"
            )
        console_url = public_url(domain, "/admin/")
        if send_welcome:
            transaction.on_commit(
                lambda: send_mail(
                    subject=f"Your {operator.brand} console is ready",
                    message=(
                        f"Welcome to {operator.brand}.\n\nSet your password: {public_url(domain, reset_path)}\n"
                        f"Then sign in to your console: {console_url}\n"
                    ),
                    from_email=settings.DEFAULT_FROM_EMAIL,
                    recipient_list=[admin_email],
                )
            )
    log.info("provisioned operator %s on %s", slug, domain)
    return ProvisionedOperator(operator=operator, console_url=console_url, admin_email=admin_email)


def operator_set_status(*, operator: Operator, status: str) -> Operator:
    """Suspend or resume: takes effect on the next request and the next task, nothing is deleted."""
    if status not in OperatorStatus.values:
        raise ValidationError({"status": [f"Unknown status {status!r}."]})
    if operator.status != status:
        operator.status = status
        operator.save(update_fields=["status", "updated_at"])
    return operator


def operator_domain_add(*, operator: Operator, domain: str) -> Domain:
    domain = domain.strip().lower()
    if Domain.objects.filter(domain=domain).exists():
        raise OperatorConflict(f"The domain {domain!r} is already in use.")
    return Domain.objects.create(domain=domain, tenant=operator, is_primary=not operator.domains.exists())


def platform_tenant_ensure() -> Operator:
    """The public-schema row django-tenants routes the platform domain to."""
    operator, _ = Operator.objects.get_or_create(schema_name="public", defaults={"name": "OpenCarrier platform"})
    Domain.objects.get_or_create(domain=settings.PLATFORM_DOMAIN, defaults={"tenant": operator, "is_primary": True})
    return operator
