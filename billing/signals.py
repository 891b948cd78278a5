"""What may complete an unrated CDR schedules rating it (in the background, after commit).

Rows written through the console or the REST API's generic create/update go through ``save()``; bulk paths
(``rates_import``, ``account_create``) call ``cdrs_rate_pending_schedule`` themselves or save like these.
A rate edited one by one also retires the tariff's cached deck (the cache is keyed by ``Tariff.updated_at``).
"""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from .models import Account, ClassRate, FreephoneNumber, MinutePackage, Rate, Tariff, TariffClass, TimeBand, Trunk
from .services.ingest import cdrs_rate_pending_schedule


@receiver(post_save, sender=Account)
@receiver(post_save, sender=FreephoneNumber)
@receiver(post_save, sender=Trunk)
@receiver(post_save, sender=Tariff)
@receiver(post_save, sender=TariffClass)
@receiver(post_save, sender=ClassRate)
@receiver(post_save, sender=MinutePackage)
def unrated_cdrs_may_rate_now(sender, instance, **kwargs) -> None:
    cdrs_rate_pending_schedule()


@receiver(post_save, sender=Rate)
@receiver(post_delete, sender=Rate)
@receiver(post_save, sender=TimeBand)
@receiver(post_delete, sender=TimeBand)
def deck_changed(sender, instance, **kwargs) -> None:
    Tariff.objects.filter(pk=instance.tariff_id).update(updated_at=timezone.now())
    if kwargs.get("signal") is post_save:
        cdrs_rate_pending_schedule()
