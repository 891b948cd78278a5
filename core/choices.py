from django.db import models


class CustomerKind(models.TextChoices):
    PBX_CLIENT = "pbx_client", "Cloud PBX client"
    SMS_CLIENT = "sms_client", "SMS client"
    PARTNER = "partner", "Partner"
    SUBSCRIBER = "subscriber", "Mobile subscriber"
