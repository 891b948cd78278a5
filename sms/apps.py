from django.apps import AppConfig


class SmsConfig(AppConfig):
    name = "sms"
    verbose_name = "SMS"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from billing.models import Account

        from . import models
        from .selectors import sms_config_changed

        def changed(sender, **kwargs) -> None:
            sms_config_changed()

        # The rows the acceptance path keeps in memory (sms.selectors.sms_config_get).
        for model in (
            models.SmsClient,
            models.Gateway,
            models.Route,
            models.NumberPrefix,
            models.SpamRule,
            models.FraudLimit,
            Account,
        ):
            post_save.connect(changed, sender=model, dispatch_uid=f"sms-config-{model.__name__}-save")
            post_delete.connect(changed, sender=model, dispatch_uid=f"sms-config-{model.__name__}-delete")
