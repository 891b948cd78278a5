from django.db import models


class OperatorStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class Product(models.TextChoices):
    MVNO = "mvno", "Virtual mobile operator"
    PBX = "pbx", "Cloud PBX"
    SMS = "sms", "SMS aggregator"
