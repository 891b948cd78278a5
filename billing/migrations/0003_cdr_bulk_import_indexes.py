# Schema only: lighter CDR indexes for bulk import (no FK check per CDR row, no duplicate account index,
# correlation ids indexed only where a CDR has one). Reversible.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0002_tariff_classes_packages_trunks_rerate'),
    ]

    operations = [
        migrations.AlterField(
            model_name='cdr',
            name='account',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='cdrs', to='billing.account'),
        ),
        migrations.AlterField(
            model_name='cdr',
            name='correlation_id',
            field=models.CharField(blank=True, max_length=120),
        ),
        migrations.AddIndex(
            model_name='cdr',
            index=models.Index(condition=models.Q(('correlation_id', ''), _negated=True), fields=['correlation_id'], name='billing_cdr_correlation'),
        ),
    ]
